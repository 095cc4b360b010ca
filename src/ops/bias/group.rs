//! [`SumRowsGroup`]: the bias gradients of several layers in one dispatch. Nothing reads
//! a bias gradient before the updates, so the plan sums them all after the backward pass,
//! a few per dispatch, instead of one dispatch per layer.

use super::{cpu, Host, Operation, SumRows};
use crate::device::{
    lane_groups, u32_of, Absorbed, Dispatch, KernelKey, Lowerer, Res, Shader, ShaderTable, Slot,
    Step, Uniform,
};
use crate::tensor::TensorId;
use anyhow::{ensure, Result};

/// Column sums one [`SumRowsGroup`] dispatch computes: two storage bindings each, within
/// WebGPU's default of 8 per stage.
pub const SUM_ROWS_GROUP: usize = 4;

/// One column sum of a group: `out[c] = Σ_r x[r,c]` over `x` of `[rows, cols]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ColumnSum {
    pub x: TensorId,
    pub out: TensorId,
    pub rows: usize,
    pub cols: usize,
}

/// [`SumRows`] without accumulation for one to [`SUM_ROWS_GROUP`] tensors at once.
#[derive(Clone, Debug, PartialEq)]
pub struct SumRowsGroup {
    pub sums: Vec<ColumnSum>,
}

impl SumRowsGroup {
    /// `sums` in groups (see [`lane_groups`]).
    pub fn chunked(sums: &[ColumnSum]) -> Vec<SumRowsGroup> {
        lane_groups(sums, |s| s.cols, SUM_ROWS_GROUP)
            .into_iter()
            .map(|sums| SumRowsGroup { sums })
            .collect()
    }
}

impl Operation for SumRowsGroup {
    fn reads(&self) -> Vec<TensorId> {
        self.sums.iter().map(|s| s.x).collect()
    }
    fn writes(&self) -> Vec<TensorId> {
        self.sums.iter().map(|s| s.out).collect()
    }
    fn lens(&self) -> Vec<(TensorId, usize)> {
        self.sums
            .iter()
            .flat_map(|s| [(s.x, s.rows * s.cols), (s.out, s.cols)])
            .collect()
    }
    fn check(&self) -> Result<()> {
        ensure!(
            (1..=SUM_ROWS_GROUP).contains(&self.sums.len()),
            "sums {} tensors; one group takes 1 to {SUM_ROWS_GROUP}",
            self.sums.len()
        );
        Ok(())
    }
    fn run_cpu(&self, h: &mut Host) -> Result<()> {
        for s in &self.sums {
            h.update(s.out, |out, h| {
                cpu::sum_rows(h.get(s.x), out, s.rows, s.cols, false)
            });
        }
        Ok(())
    }
    fn lower(&self, lw: &mut Lowerer) -> Result<Dispatch> {
        sum_rows_group(self, lw)
    }
    /// The sums a weight-gradient matmul already wrote (see `ops/matmul/absorb.rs`) are
    /// left out, the whole dispatch where that is all of them.
    fn lower_fused(
        &self,
        lw: &mut Lowerer,
        _following: &[crate::ops::Op],
    ) -> Result<Option<(Vec<Step>, usize)>> {
        let Some(left) = lw.left_after_absorbed(&self.sums, |s| Absorbed::Sum(s.out)) else {
            return Ok(None);
        };
        let mut steps = Vec::new();
        if !left.is_empty() {
            let op = crate::ops::Op::SumRowsGroup(SumRowsGroup { sums: left });
            steps.extend(lw.lower_op(&op)?.into_iter().map(Step::Dispatch));
        }
        Ok(Some((steps, 1)))
    }
    /// Small tensors keep their shared dispatch; each one larger than a storage binding
    /// is summed as [`SumRows`] sums it, over windows of rows.
    fn lower_split(&self, lw: &mut Lowerer) -> Result<Vec<Dispatch>> {
        let max = lw.max_binding();
        lw.split_groups(
            &self.sums,
            |lw, s| lw.bytes(s.x) <= max && lw.bytes(s.out) <= max,
            |lw, sums| sum_rows_group(&SumRowsGroup { sums }, lw),
            |lw, s| {
                let one = SumRows {
                    x: s.x,
                    out: s.out,
                    rows: s.rows,
                    cols: s.cols,
                    accumulate: false,
                };
                one.lower_split(lw)
            },
        )
    }
}

pub const SHADER: Shader = Shader::elements(
    "bias_group",
    include_str!("../../../shaders/bias_group.wgsl"),
);

const SRCS: [Slot; SUM_ROWS_GROUP] = [
    Slot::read(1, "src"),
    Slot::read(3, "src2"),
    Slot::read(5, "src3"),
    Slot::read(7, "src4"),
];
const DSTS: [Slot; SUM_ROWS_GROUP] = [
    Slot::read_write(2, "dst"),
    Slot::read_write(4, "dst2"),
    Slot::read_write(6, "dst3"),
    Slot::read_write(8, "dst4"),
];

crate::uniform! {
    /// Each sum's rows and columns (in `V`s; 0 columns for an unused place).
    pub struct Dims {
        rows: u32, rows2: u32, rows3: u32, rows4: u32,
        cols: u32, cols2: u32, cols3: u32, cols4: u32,
    }
}

/// Columns (or groups of 4) per workgroup: `COLS_WG` in `bias_group.wgsl`.
const COLS_WG: usize = 64;

fn sum_rows_group(op: &SumRowsGroup, lw: &mut Lowerer) -> Result<Dispatch> {
    let sums = &op.sums;
    ensure!(
        (1..=SUM_ROWS_GROUP).contains(&sums.len()),
        "a column-sum group takes 1 to {SUM_ROWS_GROUP} tensors, got {}",
        sums.len()
    );
    let vec4 = sums.iter().all(|s| s.cols.is_multiple_of(4));
    let width = if vec4 { 4 } else { 1 };
    let (mut rows, mut cols) = ([0u32; SUM_ROWS_GROUP], [0u32; SUM_ROWS_GROUP]);
    for (i, s) in sums.iter().enumerate() {
        (rows[i], cols[i]) = (u32_of(s.rows)?, u32_of(s.cols / width)?);
    }
    let widest = cols.iter().copied().max().unwrap_or(0) as usize;
    let groups = lw.grid(widest.div_ceil(COLS_WG))?;
    let dims = Dims {
        rows: rows[0],
        rows2: rows[1],
        rows3: rows[2],
        rows4: rows[3],
        cols: cols[0],
        cols2: cols[1],
        cols3: cols[2],
        cols4: cols[3],
    };
    // Unused places read the first input again and write the spare buffers, distinct
    // ones (WebGPU forbids a writable binding aliasing another); no invocation touches
    // them, their column count being 0.
    let spare = lw.placeholders.clone();
    let mut bindings = Vec::new();
    for i in 0..SUM_ROWS_GROUP {
        match sums.get(i) {
            Some(s) => {
                bindings.push((SRCS[i], Res::Tensor(s.x)));
                bindings.push((DSTS[i], Res::Tensor(s.out)));
            }
            None => {
                bindings.push((SRCS[i], Res::Tensor(sums[0].x)));
                bindings.push((DSTS[i], Res::Buffer(&spare[i - 1])));
            }
        }
    }
    lw.dispatch(
        KernelKey::new(&SHADER, "sum_rows_group").vec4(vec4),
        Some(dims),
        &bindings,
        groups,
    )
}

pub fn tables() -> Vec<ShaderTable> {
    vec![ShaderTable {
        shader: SHADER,
        slots: &[
            SRCS[0], DSTS[0], SRCS[1], DSTS[1], SRCS[2], DSTS[2], SRCS[3], DSTS[3],
        ],
        dims: Some(Dims::FIELDS),
        uniforms: &[],
    }]
}
