//! [`SgdGroup`]: plain SGD over several parameters in one dispatch. A step of a small
//! model spent a third of its dispatches on one SGD update per tensor, each of which
//! costs a CPU-backed adapter more to launch than to run.

use super::{cpu, non_negative, Host, Operation};
use crate::device::{
    lane_groups, lanes, u32_of, Absorbed, Dispatch, KernelKey, Lowerer, Res, Shader, ShaderTable,
    Slot, Step, Uniform, ELEMENTWISE_WG,
};
use crate::tensor::TensorId;
use anyhow::{ensure, Result};

/// Parameters one [`SgdGroup`] dispatch updates: two storage bindings each, within
/// WebGPU's default of 8 per stage (the learning rate comes from a uniform).
pub const SGD_GROUP: usize = 4;

/// `torch.optim.SGD` without momentum (`param -= lr·(grad + weight_decay·param)`) for
/// each `(param, grad, len)` in `tensors`, one to [`SGD_GROUP`] of them: what [`super::Sgd`]
/// does for one, in one dispatch for all.
#[derive(Clone, Debug, PartialEq)]
pub struct SgdGroup {
    pub tensors: Vec<(TensorId, TensorId, usize)>,
    pub weight_decay: f32,
}

impl SgdGroup {
    /// The update of `params` (`(param, grad, len)` in update order) as groups (see
    /// [`lane_groups`]).
    pub fn chunked(params: &[(TensorId, TensorId, usize)], weight_decay: f32) -> Vec<SgdGroup> {
        lane_groups(params, |t| t.2, SGD_GROUP)
            .into_iter()
            .map(|tensors| SgdGroup {
                tensors,
                weight_decay,
            })
            .collect()
    }
}

impl Operation for SgdGroup {
    fn reads(&self) -> Vec<TensorId> {
        self.tensors.iter().flat_map(|t| [t.0, t.1]).collect()
    }
    fn writes(&self) -> Vec<TensorId> {
        self.tensors.iter().map(|t| t.0).collect()
    }
    fn in_place(&self) -> Vec<TensorId> {
        self.writes()
    }
    fn lens(&self) -> Vec<(TensorId, usize)> {
        self.tensors
            .iter()
            .flat_map(|t| [(t.0, t.2), (t.1, t.2)])
            .collect()
    }
    fn check(&self) -> Result<()> {
        ensure!(
            (1..=SGD_GROUP).contains(&self.tensors.len()),
            "updates {} tensors; one SGD group takes 1 to {SGD_GROUP}",
            self.tensors.len()
        );
        non_negative("weight_decay", self.weight_decay)
    }
    fn run_cpu(&self, h: &mut Host) -> Result<()> {
        let lr = h.lr()?;
        for &(param, grad, len) in &self.tensors {
            h.update(param, |p, h| {
                cpu::sgd(
                    &mut p[..len],
                    &h.get(grad)[..len],
                    None,
                    lr,
                    self.weight_decay,
                )
            });
        }
        Ok(())
    }
    fn lower(&self, lw: &mut Lowerer) -> Result<Dispatch> {
        sgd_group(self, lw)
    }
    /// The groups of a step come in a run; parameters a weight-gradient matmul already
    /// updated (see `ops/matmul/absorb.rs`) are left out and the rest regrouped.
    fn lower_fused(
        &self,
        lw: &mut Lowerer,
        following: &[crate::ops::Op],
    ) -> Result<Option<(Vec<Step>, usize)>> {
        // Nothing taken over (always so on GPUs): lowered one by one, see GuardFinite's.
        if !lw.absorbed.iter().any(|a| matches!(a, Absorbed::Update(_))) {
            return Ok(None);
        }
        let run: Vec<&SgdGroup> = following
            .iter()
            .map_while(|op| match op {
                crate::ops::Op::SgdGroup(g) if g.weight_decay == self.weight_decay => Some(g),
                _ => None,
            })
            .collect();
        let all: Vec<(TensorId, TensorId, usize)> =
            run.iter().flat_map(|g| g.tensors.iter().copied()).collect();
        let Some(left) = lw.left_after_absorbed(&all, |t| Absorbed::Update(t.0)) else {
            return Ok(None);
        };
        let mut steps = Vec::new();
        for group in SgdGroup::chunked(&left, self.weight_decay) {
            let op = crate::ops::Op::SgdGroup(group);
            steps.extend(lw.lower_op(&op)?.into_iter().map(Step::Dispatch));
        }
        Ok(Some((steps, run.len())))
    }
    /// Small tensors keep their shared dispatch; each one larger than a storage binding
    /// gets its own, in windows.
    fn lower_split(&self, lw: &mut Lowerer) -> Result<Vec<Dispatch>> {
        let max = lw.max_binding();
        lw.split_groups(
            &self.tensors,
            |lw, &(p, g, _)| lw.bytes(p) <= max && lw.bytes(g) <= max,
            |lw, tensors| sgd_group(&SgdGroup { tensors, ..*self }, lw),
            |lw, (p, g, len)| {
                lw.element_windows(&[p, g], len, 1, |lw, n| {
                    let tensors = vec![(p, g, n)];
                    sgd_group(&SgdGroup { tensors, ..*self }, lw)
                })
            },
        )
    }
}

pub const SHADER: Shader = Shader::elements(
    "optim_group",
    include_str!("../../../shaders/optim_group.wgsl"),
);

const HYPER: Slot = Slot::uniform(1, "hyper");
const PARAMS: [Slot; SGD_GROUP] = [
    Slot::read_write(2, "param"),
    Slot::read_write(4, "param2"),
    Slot::read_write(6, "param3"),
    Slot::read_write(8, "param4"),
];
const GRADS: [Slot; SGD_GROUP] = [
    Slot::read(3, "grad"),
    Slot::read(5, "grad2"),
    Slot::read(7, "grad3"),
    Slot::read(9, "grad4"),
];

crate::uniform! {
    /// Each tensor's length in `V`s (0 for an unused place) and the weight decay.
    pub struct Dims { a: u32, b: u32, c: u32, d: u32, weight_decay: f32, _pad0: u32, _pad1: u32, _pad2: u32 }
}

crate::uniform! {
    /// The hyper-parameter block (`crate::tensor::Hyper`) read as a uniform.
    pub struct Hyper { lr: f32, momentum: f32, ln_momentum: f32, cycled: f32 }
}

fn sgd_group(op: &SgdGroup, lw: &mut Lowerer) -> Result<Dispatch> {
    let tensors = &op.tensors;
    ensure!(
        (1..=SGD_GROUP).contains(&tensors.len()),
        "an SGD group updates 1 to {SGD_GROUP} tensors, got {}",
        tensors.len()
    );
    let vec4 = tensors.iter().all(|t| lanes(t.2).0);
    let width = if vec4 { 4 } else { 1 };
    let mut lens = [0u32; SGD_GROUP];
    for (l, t) in lens.iter_mut().zip(tensors) {
        *l = u32_of(t.2 / width)?;
    }
    let longest = lens.iter().copied().max().unwrap_or(0) as usize;
    let groups = lw.grid(longest.div_ceil(ELEMENTWISE_WG))?;
    let [a, b, c, d] = lens;
    let dims = Dims {
        a,
        b,
        c,
        d,
        weight_decay: op.weight_decay,
        ..Dims::default()
    };
    let hyper = lw.hyper.clone();
    // Unused places bind the spare buffers, distinct ones for the writable parameters
    // (WebGPU forbids a writable binding aliasing another), and repeat the first gradient.
    let spare = lw.placeholders.clone();
    let mut bindings = vec![(HYPER, Res::Buffer(&hyper))];
    for i in 0..SGD_GROUP {
        match tensors.get(i) {
            Some(&(p, g, _)) => {
                bindings.push((PARAMS[i], Res::Tensor(p)));
                bindings.push((GRADS[i], Res::Tensor(g)));
            }
            None => {
                bindings.push((PARAMS[i], Res::Buffer(&spare[i - 1])));
                bindings.push((GRADS[i], Res::Tensor(tensors[0].1)));
            }
        }
    }
    lw.dispatch(
        KernelKey::new(&SHADER, "sgd_group").vec4(vec4),
        Some(dims),
        &bindings,
        groups,
    )
}

pub fn tables() -> Vec<ShaderTable> {
    vec![ShaderTable {
        shader: SHADER,
        slots: &[
            HYPER, PARAMS[0], GRADS[0], PARAMS[1], GRADS[1], PARAMS[2], GRADS[2], PARAMS[3],
            GRADS[3],
        ],
        dims: Some(Dims::FIELDS),
        uniforms: &[("hyper", Hyper::FIELDS)],
    }]
}
