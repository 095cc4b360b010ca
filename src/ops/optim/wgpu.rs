//! Lowering of the optimizer updates to `shaders/optim.wgsl`.

use super::{Adagrad, Adam, Adamax, AdvanceStep, Nadam, NadamMuProduct, Rmsprop, Sgd};
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
const STATE_C: Slot = Slot::read_write(8, "state_c");
const MU_PRODUCT: Slot = Slot::read_write(9, "mu_product");

crate::uniform! {
    /// `flag`: Nesterov for `sgd_momentum`, decoupled weight decay (AdamW) for `adam`.
    pub struct Dims { len: u32, flag: u32, _pad0: u32, _pad1: u32 }
}

crate::uniform! {
    /// An update's fixed constants, made once at compile time; `rate` is the momentum of
    /// `sgd_momentum`, beta1 of the Adam family and alpha of `rmsprop`; `aux` is
    /// RMSprop's momentum, Adagrad's lr_decay or NAdam's `momentum_decay·ln 0.96`.
    pub struct Consts {
        rate: f32,
        beta2: f32,
        eps: f32,
        weight_decay: f32,
        ln_beta1: f32,
        ln_beta2: f32,
        aux: f32,
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

/// One optimizer update: the parameter, its gradient, the hyper-parameter block and the
/// optimizer's constants, then its own bindings (step counter, state); every update kernel
/// takes them in that layout.
#[allow(clippy::too_many_arguments)]
fn update(
    lw: &mut Lowerer,
    key: KernelKey,
    len: usize,
    param: usize,
    grad: usize,
    consts: Consts,
    flag: bool,
    own: &[(Slot, Res)],
) -> Result<Dispatch> {
    let consts = lw.constants(&[consts], true);
    let hyper = lw.hyper.clone();
    let mut bindings = vec![
        (PARAM, Res::Tensor(param)),
        (GRAD, Res::Tensor(grad)),
        (HYPER, Res::Buffer(&hyper)),
        (CONSTS, Res::Buffer(&consts)),
    ];
    bindings.extend_from_slice(own);
    lw.dispatch_elementwise(key, len, dims(flag), &bindings)
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
    let (entry, nesterov, own) = match op.momentum {
        None => ("sgd", false, Vec::new()),
        Some(m) => (
            "sgd_momentum",
            m.nesterov,
            vec![(STATE_A, Res::Tensor(m.buffer))],
        ),
    };
    let key = KernelKey::new(&SHADER, entry);
    update(lw, key, op.len, op.param, op.grad, consts, nesterov, &own)
}

/// The Adam family's constants; ln β in f64 on the host: the kernel's bias correction
/// needs it accurately.
fn adam_consts(beta1: f32, beta2: f32, eps: f32, weight_decay: f32) -> Consts {
    let ln = |b: f32| if b > 0.0 { (b as f64).ln() as f32 } else { 0.0 };
    Consts {
        rate: beta1,
        beta2,
        eps,
        weight_decay,
        ln_beta1: ln(beta1),
        ln_beta2: ln(beta2),
        ..Consts::default()
    }
}

/// A 1-element storage buffer for a state binding that the kernel's override constants
/// switch off: the entry point still declares it, so something must be bound.
fn dummy(lw: &mut Lowerer) -> wgpu::Buffer {
    lw.constants(&[0.0f32; 4], false)
}

pub fn adam(op: &Adam, lw: &mut Lowerer) -> Result<Dispatch> {
    let consts = adam_consts(op.beta1, op.beta2, op.eps, op.weight_decay);
    let spare = dummy(lw);
    let max = match op.max_exp_avg_sq {
        Some(t) => Res::Tensor(t),
        None => Res::Buffer(&spare),
    };
    let key = KernelKey::new(&SHADER, "adam").with("AMSGRAD", op.max_exp_avg_sq.is_some() as u32);
    let own = [
        (STEP, Res::Tensor(op.step)),
        (STATE_A, Res::Tensor(op.exp_avg)),
        (STATE_B, Res::Tensor(op.exp_avg_sq)),
        (STATE_C, max),
    ];
    update(
        lw,
        key,
        op.len,
        op.param,
        op.grad,
        consts,
        op.decoupled,
        &own,
    )
}

pub fn rmsprop(op: &Rmsprop, lw: &mut Lowerer) -> Result<Dispatch> {
    let consts = Consts {
        rate: op.alpha,
        eps: op.eps,
        weight_decay: op.weight_decay,
        aux: op.momentum,
        ..Consts::default()
    };
    let (spare_b, spare_c) = (dummy(lw), dummy(lw));
    let or_spare = |t: Option<usize>, spare| t.map_or(Res::Buffer(spare), Res::Tensor);
    let key = KernelKey::new(&SHADER, "rmsprop")
        .with("MOMENTUM", op.momentum_buffer.is_some() as u32)
        .with("CENTERED", op.grad_avg.is_some() as u32);
    let own = [
        (STATE_A, Res::Tensor(op.square_avg)),
        (STATE_B, or_spare(op.momentum_buffer, &spare_b)),
        (STATE_C, or_spare(op.grad_avg, &spare_c)),
    ];
    update(lw, key, op.len, op.param, op.grad, consts, false, &own)
}

pub fn adagrad(op: &Adagrad, lw: &mut Lowerer) -> Result<Dispatch> {
    let consts = Consts {
        eps: op.eps,
        weight_decay: op.weight_decay,
        aux: op.lr_decay,
        ..Consts::default()
    };
    let own = [(STEP, Res::Tensor(op.step)), (STATE_A, Res::Tensor(op.sum))];
    let key = KernelKey::new(&SHADER, "adagrad");
    update(lw, key, op.len, op.param, op.grad, consts, false, &own)
}

pub fn adamax(op: &Adamax, lw: &mut Lowerer) -> Result<Dispatch> {
    let consts = adam_consts(op.beta1, op.beta2, op.eps, op.weight_decay);
    let own = [
        (STEP, Res::Tensor(op.step)),
        (STATE_A, Res::Tensor(op.exp_avg)),
        (STATE_B, Res::Tensor(op.exp_inf)),
    ];
    let key = KernelKey::new(&SHADER, "adamax");
    update(lw, key, op.len, op.param, op.grad, consts, false, &own)
}

/// NAdam's `ψ·ln 0.96`, in f64 on the host.
fn nadam_aux(momentum_decay: f32) -> f32 {
    (momentum_decay as f64 * 0.96f64.ln()) as f32
}

pub fn nadam(op: &Nadam, lw: &mut Lowerer) -> Result<Dispatch> {
    let consts = Consts {
        aux: nadam_aux(op.momentum_decay),
        ..adam_consts(op.beta1, op.beta2, op.eps, op.weight_decay)
    };
    let own = [
        (STEP, Res::Tensor(op.step)),
        (STATE_A, Res::Tensor(op.exp_avg)),
        (STATE_B, Res::Tensor(op.exp_avg_sq)),
        (MU_PRODUCT, Res::Tensor(op.mu_product)),
    ];
    let key = KernelKey::new(&SHADER, "nadam");
    update(lw, key, op.len, op.param, op.grad, consts, false, &own)
}

pub fn nadam_mu_product(op: &NadamMuProduct, lw: &mut Lowerer) -> Result<Dispatch> {
    let consts = Consts {
        rate: op.beta1,
        aux: nadam_aux(op.momentum_decay),
        ..Consts::default()
    };
    let consts = lw.constants(&[consts], true);
    // One-cycle's beta1 reaches the product through the hyper-parameter block.
    let hyper = lw.hyper.clone();
    lw.dispatch::<Dims>(
        KernelKey::new(&SHADER, "nadam_mu_product"),
        None,
        &[
            (STEP, Res::Tensor(op.step)),
            (HYPER, Res::Buffer(&hyper)),
            (CONSTS, Res::Buffer(&consts)),
            (MU_PRODUCT, Res::Tensor(op.mu_product)),
        ],
        [1, 1, 1],
    )
}

pub fn tables() -> Vec<ShaderTable> {
    vec![ShaderTable {
        shader: SHADER,
        slots: &[
            PARAM, GRAD, HYPER, STEP, CONSTS, STATE_A, STATE_B, STATE_C, MU_PRODUCT,
        ],
        dims: Some(Dims::FIELDS),
        uniforms: &[("consts", Consts::FIELDS)],
    }]
}
