//! Gradient health: the statistics a statistics step gathers into its record
//! ([`ActivationStats`], [`Norm`], [`CopyInto`]; the record's layout is the model's, see
//! `crate::model::health::layout`) and the always-on non-finite guard ([`GuardFinite`]).

pub mod cpu;
pub mod wgpu;

use super::{Host, Operation};
use crate::device::{lane_groups, Absorbed, Dispatch, Lowerer, Step};
use crate::tensor::TensorId;
use anyhow::{ensure, Result};

/// Values written by one [`ActivationStats`].
pub const ACT_STATS_LEN: usize = 5;
/// Values written by one [`Norm`]: the norm and the non-finite count.
pub const NORM_STATS_LEN: usize = 2;
/// Tensors one guard dispatch checks (bindings of `guard` in `shaders/health/guard.wgsl`).
pub const GUARD_GROUP: usize = 6;

/// `dst[offset..offset + len] = src` bit for bit: weight snapshots before the update on
/// statistics steps, and the step counter into the statistics record.
#[derive(Clone, Debug, PartialEq)]
pub struct CopyInto {
    pub src: TensorId,
    pub dst: TensorId,
    pub len: usize,
    pub dst_len: usize,
    pub offset: usize,
}

/// Activation statistics of one layer, written to `stats[at..at + 5]` (see
/// [`ACT_STATS_LEN`]): mean and standard deviation of the finite elements of
/// `out` (`[rows, cols]`), the fraction of dead units (columns where `act_in <= 0` in
/// every row) when `dead`, the fraction of saturated elements of `act_out` (`<= lo` or
/// `>= hi`) when `saturation = Some((lo, hi))`, and the count of non-finite elements.
#[derive(Clone, Debug, PartialEq)]
pub struct ActivationStats {
    pub out: TensorId,
    pub act_in: TensorId,
    pub act_out: TensorId,
    pub rows: usize,
    pub cols: usize,
    pub dead: bool,
    pub saturation: Option<(f32, f32)>,
    pub stats: TensorId,
    pub stats_len: usize,
    pub at: usize,
}

/// `stats[at] = ‖x − minus‖₂` (`‖x‖₂` without `minus`) over the finite differences,
/// and `stats[at + 1]` = how many were not finite.
#[derive(Clone, Debug, PartialEq)]
pub struct Norm {
    pub x: TensorId,
    pub minus: Option<TensorId>,
    pub len: usize,
    pub stats: TensorId,
    pub stats_len: usize,
    pub at: usize,
}

/// The always-on non-finite guard: for each `(tensor, len, slot)` in `tensors` (one to
/// [`GUARD_GROUP`]) that holds a NaN or ±inf, records the current step (the
/// `u32` counter in `step`) in `flags[slot]` as `u32::MAX - step` with an atomic max,
/// so 0 means never and the earliest step wins; and raises `flags[peaks + slot]` to the
/// largest finite magnitude in the tensor (as `f32` bits), so an error can show the
/// values growing towards an overflow. Several tensors share a dispatch because on small
/// layers launching it costs more than the loads.
#[derive(Clone, Debug, PartialEq)]
pub struct GuardFinite {
    pub tensors: Vec<(TensorId, usize, usize)>,
    pub step: TensorId,
    pub flags: TensorId,
    pub flags_len: usize,
    /// Where the peaks start in `flags`.
    pub peaks: usize,
}

/// An offset range `end` that must fit a tensor of `len`.
fn check_end(end: usize, len: usize) -> Result<()> {
    ensure!(
        end <= len,
        "writes up to element {end} of a tensor of {len}"
    );
    Ok(())
}

impl Operation for CopyInto {
    fn reads(&self) -> Vec<TensorId> {
        vec![self.src]
    }
    fn writes(&self) -> Vec<TensorId> {
        vec![self.dst]
    }
    fn lens(&self) -> Vec<(TensorId, usize)> {
        vec![(self.src, self.len), (self.dst, self.dst_len)]
    }
    fn check(&self) -> Result<()> {
        check_end(self.offset + self.len, self.dst_len)
    }
    fn run_cpu(&self, h: &mut Host) -> Result<()> {
        let (offset, len) = (self.offset, self.len);
        h.update(self.dst, |d, h| {
            d[offset..offset + len].copy_from_slice(&h.get(self.src)[..len])
        });
        Ok(())
    }
    fn lower(&self, lw: &mut Lowerer) -> Result<Dispatch> {
        wgpu::copy(self, lw)
    }
    fn lower_split(&self, lw: &mut Lowerer) -> Result<Vec<Dispatch>> {
        if self.offset != 0 || self.dst_len != self.len {
            return Err(lw.refuse(""));
        }
        lw.element_windows(&[self.src, self.dst], self.len, 1, |lw, len| {
            let part = CopyInto {
                len,
                dst_len: len,
                ..*self
            };
            wgpu::copy(&part, lw)
        })
    }
}

impl Operation for ActivationStats {
    fn reads(&self) -> Vec<TensorId> {
        vec![self.out, self.act_in, self.act_out]
    }
    fn writes(&self) -> Vec<TensorId> {
        vec![self.stats]
    }
    fn lens(&self) -> Vec<(TensorId, usize)> {
        let all = self.rows * self.cols;
        vec![
            (self.out, all),
            (self.act_in, all),
            (self.act_out, all),
            (self.stats, self.stats_len),
        ]
    }
    fn check(&self) -> Result<()> {
        check_end(self.at + ACT_STATS_LEN, self.stats_len)
    }
    fn run_cpu(&self, h: &mut Host) -> Result<()> {
        let at = self.at;
        h.update(self.stats, |record, h| {
            cpu::activation_stats(
                h.get(self.out),
                h.get(self.act_in),
                h.get(self.act_out),
                self.rows,
                self.cols,
                self.dead,
                self.saturation,
                &mut record[at..at + ACT_STATS_LEN],
            )
        });
        Ok(())
    }
    fn lower(&self, lw: &mut Lowerer) -> Result<Dispatch> {
        wgpu::activation_stats(self, lw)
    }
}

impl Operation for Norm {
    fn reads(&self) -> Vec<TensorId> {
        let mut r = vec![self.x];
        r.extend(self.minus);
        r
    }
    fn writes(&self) -> Vec<TensorId> {
        vec![self.stats]
    }
    fn lens(&self) -> Vec<(TensorId, usize)> {
        let mut v = vec![(self.x, self.len), (self.stats, self.stats_len)];
        v.extend(self.minus.map(|m| (m, self.len)));
        v
    }
    fn check(&self) -> Result<()> {
        check_end(self.at + NORM_STATS_LEN, self.stats_len)
    }
    fn run_cpu(&self, h: &mut Host) -> Result<()> {
        let (at, len) = (self.at, self.len);
        h.update(self.stats, |record, h| {
            cpu::norm(
                &h.get(self.x)[..len],
                self.minus.map(|m| &h.get(m)[..len]),
                &mut record[at..at + NORM_STATS_LEN],
            )
        });
        Ok(())
    }
    fn lower(&self, lw: &mut Lowerer) -> Result<Dispatch> {
        wgpu::norm(self, lw)
    }
}

impl Operation for GuardFinite {
    fn reads(&self) -> Vec<TensorId> {
        let mut r: Vec<TensorId> = self.tensors.iter().map(|t| t.0).collect();
        r.push(self.step);
        r
    }
    // The flags are updated atomically in place; listing them as read too would flag the
    // op as aliased.
    fn writes(&self) -> Vec<TensorId> {
        vec![self.flags]
    }
    fn lens(&self) -> Vec<(TensorId, usize)> {
        let mut v: Vec<(TensorId, usize)> = self.tensors.iter().map(|t| (t.0, t.1)).collect();
        v.extend([(self.step, 1), (self.flags, self.flags_len)]);
        v
    }
    fn check(&self) -> Result<()> {
        ensure!(
            (1..=GUARD_GROUP).contains(&self.tensors.len()),
            "guards {} tensors; one dispatch takes 1 to {GUARD_GROUP}",
            self.tensors.len()
        );
        let end = self.tensors.iter().map(|t| t.2 + 1).max().unwrap_or(0);
        check_end(end + self.peaks, self.flags_len)
    }
    fn run_cpu(&self, h: &mut Host) -> Result<()> {
        let step = h.get(self.step)[0];
        h.update(self.flags, |f, h| {
            for &(x, len, slot) in &self.tensors {
                cpu::guard_finite(&h.get(x)[..len], step, f, slot, self.peaks);
            }
        });
        Ok(())
    }
    fn lower(&self, lw: &mut Lowerer) -> Result<Dispatch> {
        wgpu::guard(self, lw)
    }
    fn lower_split(&self, lw: &mut Lowerer) -> Result<Vec<Dispatch>> {
        wgpu::guard_split(self, lw)
    }
    /// The guard ops of a step come in a run; tensors a matmul's epilogue already checked
    /// (see `ops/matmul/absorb.rs`) are left out and the rest regrouped, so the run takes
    /// fewer dispatches.
    fn lower_fused(
        &self,
        lw: &mut Lowerer,
        following: &[super::Op],
    ) -> Result<Option<(Vec<Step>, usize)>> {
        // Nothing taken over (always so on GPUs): the ops lower one by one, without
        // gathering the run again for each, which made compiling quadratic in depth.
        if !lw.absorbed.iter().any(|a| matches!(a, Absorbed::Guard(_))) {
            return Ok(None);
        }
        let same = |g: &GuardFinite| {
            (g.step, g.flags, g.flags_len, g.peaks)
                == (self.step, self.flags, self.flags_len, self.peaks)
        };
        let run: Vec<&GuardFinite> = following
            .iter()
            .map_while(|op| match op {
                super::Op::GuardFinite(g) if same(g) => Some(g),
                _ => None,
            })
            .collect();
        let all: Vec<(TensorId, usize, usize)> =
            run.iter().flat_map(|g| g.tensors.iter().copied()).collect();
        let Some(left) = lw.left_after_absorbed(&all, |t| Absorbed::Guard(t.0)) else {
            return Ok(None);
        };
        let mut steps = Vec::new();
        for tensors in lane_groups(&left, |t| t.1, GUARD_GROUP) {
            let op = super::Op::GuardFinite(GuardFinite {
                tensors,
                ..self.clone()
            });
            steps.extend(lw.lower_op(&op)?.into_iter().map(Step::Dispatch));
        }
        Ok(Some((steps, run.len())))
    }
}

/// The guard op in `rest` (the ops after one that reads or writes `t`) that checks `t`
/// (`len` values) and the flag slot, where no op before it writes `t` (but the one at
/// `writer`), the step counter or, other guards apart, the flags: where the earlier op
/// may check `t` in its stead (see `ops/matmul/absorb.rs`).
pub fn later_guard(
    rest: &[super::Op],
    t: TensorId,
    len: usize,
    writer: Option<usize>,
) -> Option<(&GuardFinite, usize)> {
    let rest = &rest[..rest.len().min(crate::device::LOOKAHEAD)];
    let (at, g, slot) = rest.iter().enumerate().find_map(|(i, o)| match o {
        super::Op::GuardFinite(g) => g
            .tensors
            .iter()
            .find(|x| x.0 == t && x.1 == len)
            .map(|x| (i, g, x.2)),
        _ => None,
    })?;
    let clear = rest[..at].iter().enumerate().all(|(i, o)| {
        let writes = o.reads_writes().1;
        let guard = matches!(o, super::Op::GuardFinite(_));
        (!writes.contains(&t) || Some(i) == writer)
            && !writes.contains(&g.step)
            && (guard || !writes.contains(&g.flags))
    });
    clear.then_some((g, slot))
}
