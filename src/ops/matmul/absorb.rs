//! Work of ops later in the list that the texture matmul does in its epilogue, each a
//! share of a dispatch saved: the bias gradient of a weight gradient `dW = dZᵀ·X` (the
//! column sums of `dZ`, which the plan leaves to a `SumRowsGroup` after the backward
//! pass), the non-finite guard of `C` and of those sums (a `GuardFinite` run after the
//! backward pass), and the plain SGD updates of the weight and bias (`SgdGroup`s after
//! that). A launch costs a CPU-backed adapter more than these small passes.
//!
//! Moving work earlier is only sound where the ops in between leave its inputs and
//! outputs alone; the later op then skips what was done (`Lowerer::absorbed`). An update
//! moved earlier must also not be seen by ops in between: anything clipping, scaling or
//! checking the gradient after the epilogue, or reading the weight other than through a
//! mirror that still holds the old values, keeps the update where the plan put it.

use super::texture::operand_keys;
use super::texture_kernel::{COLS, ROWS};
use super::MatMul;
use crate::device::{Absorbed, Lowerer};
use crate::ops::health::later_guard;
use crate::ops::Op;
use crate::tensor::TensorId;

/// Elements of the largest weight whose update the epilogue takes over.
pub const UPDATE_MAX: usize = 16_384;

/// What a texture matmul takes over from later ops.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Extras {
    /// The tensor the column sums of `A` (stored `[k, m]`) go to.
    pub sum: Option<TensorId>,
    /// The guard's flags, step counter and peaks offset, with the flag slots of `C` and
    /// of the sums where the epilogue checks them.
    pub guard: Option<Guard>,
    /// Plain SGD updates of the parameters whose gradients are `C` and the sums, with
    /// their weight decay.
    pub update_c: Option<TensorId>,
    pub update_sum: Option<TensorId>,
    pub weight_decay: f32,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Guard {
    pub flags: TensorId,
    pub step: TensorId,
    pub peaks: usize,
    pub slot_c: Option<usize>,
    pub slot_sum: Option<usize>,
}

/// What `op`, whose fused epilogue leaves `C` plain (no bias or activation), can take
/// over from `rest`, the ops after it. `plain`: the epilogue is the bare product.
pub fn find(lw: &Lowerer, op: &MatMul, plain: bool, rest: &[Op]) -> Extras {
    let rest = &rest[..rest.len().min(crate::device::LOOKAHEAD)];
    let mut extras = Extras::default();
    // `dW = dZᵀ·X`: the sum over the rows of dZ is the sum over the row of its mirror.
    let sum_at = (plain && op.trans_a && !op.accumulate)
        .then(|| {
            rest.iter().position(|o| match o {
                Op::SumRowsGroup(g) => g
                    .sums
                    .iter()
                    .any(|s| s.x == op.a && s.rows == op.k && s.cols == op.m),
                _ => false,
            })
        })
        .flatten();
    // Work an earlier matmul of this list took over already is not claimed twice.
    let sum_at = sum_at.filter(|&j| match &rest[j] {
        Op::SumRowsGroup(g) => g
            .sums
            .iter()
            .filter(|s| s.x == op.a && s.rows == op.k && s.cols == op.m)
            .all(|s| !lw.absorbed.contains(&Absorbed::Sum(s.out))),
        _ => false,
    });
    let sum = sum_at.and_then(|j| {
        let Op::SumRowsGroup(g) = &rest[j] else {
            return None;
        };
        let s = g
            .sums
            .iter()
            .find(|s| s.x == op.a && s.rows == op.k && s.cols == op.m)?;
        let between = &rest[..j];
        let untouched = between.iter().all(|o| {
            let (reads, writes) = o.reads_writes();
            !writes.contains(&op.a) && !writes.contains(&s.out) && !reads.contains(&s.out)
        });
        untouched.then_some(s.out)
    });
    extras.sum = sum;
    let slot_c = later_guard(rest, op.c, op.m * op.n, None);
    let slot_sum = sum.and_then(|out| later_guard(rest, out, op.m, sum_at));
    // One set of flags for both (a plan has one guard).
    let (c, s) = match (slot_c, slot_sum) {
        (Some(c), Some(s)) if (c.0.flags, c.0.step) != (s.0.flags, s.0.step) => (Some(c), None),
        other => other,
    };
    if let Some(g) = c.or(s).map(|x| x.0) {
        extras.guard = Some(Guard {
            flags: g.flags,
            step: g.step,
            peaks: g.peaks,
            slot_c: c.map(|x| x.1),
            slot_sum: s.map(|x| x.1),
        });
    }
    // A large weight keeps its grouped update, whose vector loads and stores are cheaper
    // than the epilogue's scalar ones (W1's 512×512 weights updated in the epilogue made
    // its matmuls, timed one by one, 40% slower on lavapipe: 169 ms against 121).
    let update_c = (op.m * op.n <= UPDATE_MAX)
        .then(|| update_of(lw, rest, op.c, op.m * op.n, None))
        .flatten();
    let update_sum = sum.and_then(|out| update_of(lw, rest, out, op.m, sum_at));
    // One weight decay for both (a plan has one optimizer).
    let update_sum = match (update_c, update_sum) {
        (Some(c), Some(s)) if c.1 != s.1 => None,
        (_, s) => s,
    };
    extras.weight_decay = update_c.or(update_sum).map_or(0.0, |u| u.1);
    extras.update_c = update_c.map(|u| u.0);
    extras.update_sum = update_sum.map(|u| u.0);
    extras
}

/// The parameter a plain SGD group in `rest` updates with gradient `grad` (`len`
/// values), and its weight decay, where no op before it writes the gradient (but the one
/// at `writer`) or the parameter, or reads the parameter other than as a matmul operand
/// through a mirror that is up to date now (and so still holds the old values then).
fn update_of(
    lw: &Lowerer,
    rest: &[Op],
    grad: TensorId,
    len: usize,
    writer: Option<usize>,
) -> Option<(TensorId, f32)> {
    let (at, param, wd) = rest.iter().enumerate().find_map(|(i, o)| match o {
        Op::SgdGroup(g) => g
            .tensors
            .iter()
            .find(|t| t.1 == grad && t.2 == len)
            .map(|t| (i, t.0, g.weight_decay)),
        _ => None,
    })?;
    if lw.absorbed.contains(&Absorbed::Update(param)) {
        return None;
    }
    let clear = rest[..at].iter().enumerate().all(|(i, o)| {
        let (reads, writes) = o.reads_writes();
        let old_read = match o {
            Op::MatMul(mm) => reads_through_mirror(lw, mm, param),
            _ => !reads.contains(&param),
        };
        (!writes.contains(&grad) || Some(i) == writer) && !writes.contains(&param) && old_read
    });
    clear.then_some((param, wd))
}

/// Whether texture matmul `mm` reads `t`, if at all, only through mirrors fresh now.
fn reads_through_mirror(lw: &Lowerer, mm: &MatMul, t: TensorId) -> bool {
    if mm.a != t && mm.b != t {
        return true;
    }
    // Too many workgroups: the matmul falls back to a buffer kernel.
    let fits = [mm.m.div_ceil(ROWS as usize), mm.n.div_ceil(COLS as usize)]
        .iter()
        .all(|&g| g <= lw.max_groups());
    let fresh = lw.mirrors.fresh.get(&t);
    fits && operand_keys(mm)
        .into_iter()
        .filter(|k| k.tensor == t)
        .all(|k| {
            fresh.is_some_and(|f| f.contains(&k))
                && lw.mirrors.mirrors.get(&k).is_some_and(Option::is_some)
        })
}
