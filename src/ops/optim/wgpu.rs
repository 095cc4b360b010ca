//! Lowering of the optimizer updates to `shaders/optim.wgsl`.

use super::{Adam, AdvanceStep, Sgd};
use crate::device::{Dispatch, KernelKey, Lowerer, Res, Shader, ShaderTable, Slot, Uniform};
use anyhow::Result;

pub const SHADER: Shader = Shader::elements("optim", include_str!("../../../shaders/optim.wgsl"));

const PARAM: Slot = Slot::read_write(1, "param");
const GRAD: Slot = Slot::read(2, "grad");
const HYPER: Slot = Slot::read(3, "hyper");
const STEP: Slot = Slot::read_write(4, "step_counter");
const CONSTS: Slot = Slot::uniform(5, "consts");
const STATE_A: Slot = Slot::read_write(6, "state_a");
const STATE_B: Slot = Slot::read_write(7, "state_b");

crate::uniform! {
    /// `flag`: Nesterov for `sgd_momentum`, decoupled weight decay (AdamW) for `adam`.
    pub struct Dims { len: u32, flag: u32, _pad0: u32, _pad1: u32 }
}

crate::uniform! {
    /// An update's fixed constants, made once at compile time; `rate` is the momentum of
    /// `sgd_momentum` and beta1 of `adam`.
    pub struct Consts {
        rate: f32,
        beta2: f32,
        eps: f32,
        weight_decay: f32,
        ln_beta1: f32,
        ln_beta2: f32,
        _pad0: f32,
        _pad1: f32,
    }
}

fn dims(flag: bool) -> impl FnOnce(u32) -> Dims {
    move |len| Dims {
        len,
        flag: flag as u32,
        ..Dims::default()
    }
}

pub fn advance_step(op: &AdvanceStep, lw: &mut Lowerer) -> Result<Dispatch> {
    lw.dispatch::<Dims>(
        KernelKey::new(&SHADER, "advance_step"),
        None,
        &[(STEP, Res::Tensor(op.counter))],
        [1, 1, 1],
    )
}

pub fn sgd(op: &Sgd, lw: &mut Lowerer) -> Result<Dispatch> {
    let consts = Consts {
        rate: op.momentum.map_or(0.0, |m| m.momentum),
        weight_decay: op.weight_decay,
        ..Consts::default()
    };
    let consts = lw.constants(&[consts], true);
    let hyper = lw.hyper.clone();
    let mut bindings = vec![
        (PARAM, Res::Tensor(op.param)),
        (GRAD, Res::Tensor(op.grad)),
        (HYPER, Res::Buffer(&hyper)),
        (CONSTS, Res::Buffer(&consts)),
    ];
    let (entry, nesterov) = match op.momentum {
        None => ("sgd", false),
        Some(m) => {
            bindings.push((STATE_A, Res::Tensor(m.buffer)));
            ("sgd_momentum", m.nesterov)
        }
    };
    lw.dispatch_elementwise(
        KernelKey::new(&SHADER, entry),
        op.len,
        dims(nesterov),
        &bindings,
    )
}

pub fn adam(op: &Adam, lw: &mut Lowerer) -> Result<Dispatch> {
    // ln β in f64 on the host: the kernel's bias correction needs it accurately.
    let ln = |b: f32| if b > 0.0 { (b as f64).ln() as f32 } else { 0.0 };
    let consts = Consts {
        rate: op.beta1,
        beta2: op.beta2,
        eps: op.eps,
        weight_decay: op.weight_decay,
        ln_beta1: ln(op.beta1),
        ln_beta2: ln(op.beta2),
        ..Consts::default()
    };
    let consts = lw.constants(&[consts], true);
    let hyper = lw.hyper.clone();
    lw.dispatch_elementwise(
        KernelKey::new(&SHADER, "adam"),
        op.len,
        dims(op.decoupled),
        &[
            (PARAM, Res::Tensor(op.param)),
            (GRAD, Res::Tensor(op.grad)),
            (HYPER, Res::Buffer(&hyper)),
            (STEP, Res::Tensor(op.step)),
            (CONSTS, Res::Buffer(&consts)),
            (STATE_A, Res::Tensor(op.exp_avg)),
            (STATE_B, Res::Tensor(op.exp_avg_sq)),
        ],
    )
}

pub fn tables() -> Vec<ShaderTable> {
    vec![ShaderTable {
        shader: SHADER,
        slots: &[PARAM, GRAD, HYPER, STEP, CONSTS, STATE_A, STATE_B],
        dims: Some(Dims::FIELDS),
        uniforms: &[("consts", Consts::FIELDS)],
    }]
}
