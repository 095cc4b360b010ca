//! The linear layer's bias: added to each row in forward ([`AddBias`]), and its gradient,
//! a column sum over the batch ([`SumRows`], also PReLU's slope gradient).

pub mod cpu;
pub mod group;
pub mod wgpu;

pub use group::{ColumnSum, SumRowsGroup, SUM_ROWS_GROUP};

use super::{Host, Operation};
use crate::device::{Dispatch, Lowerer};
use crate::tensor::TensorId;
use anyhow::Result;

/// `y[r,c] += bias[c]`.
#[derive(Clone, Debug, PartialEq)]
pub struct AddBias {
    pub y: TensorId,
    pub bias: TensorId,
    pub rows: usize,
    pub cols: usize,
}

/// `out[c] (+)= Σ_r x[r,c]`: the bias gradient.
#[derive(Clone, Debug, PartialEq)]
pub struct SumRows {
    pub x: TensorId,
    pub out: TensorId,
    pub rows: usize,
    pub cols: usize,
    pub accumulate: bool,
}

impl Operation for AddBias {
    fn reads(&self) -> Vec<TensorId> {
        vec![self.y, self.bias]
    }
    fn writes(&self) -> Vec<TensorId> {
        vec![self.y]
    }
    fn in_place(&self) -> Vec<TensorId> {
        vec![self.y]
    }
    fn lens(&self) -> Vec<(TensorId, usize)> {
        vec![(self.y, self.rows * self.cols), (self.bias, self.cols)]
    }
    fn run_cpu(&self, h: &mut Host) -> Result<()> {
        h.update(self.y, |y, h| {
            cpu::add_bias(y, h.get(self.bias), self.rows, self.cols)
        });
        Ok(())
    }
    fn lower(&self, lw: &mut Lowerer) -> Result<Dispatch> {
        wgpu::add_bias(self, lw)
    }
    fn lower_split(&self, lw: &mut Lowerer) -> Result<Vec<Dispatch>> {
        // Windows of whole rows keep `i mod cols` the column of element i.
        let len = self.rows * self.cols;
        lw.element_windows(&[self.y, self.bias], len, self.cols, |lw, n| {
            let rows = n / self.cols;
            wgpu::add_bias(&AddBias { rows, ..*self }, lw)
        })
    }
}

impl Operation for SumRows {
    fn reads(&self) -> Vec<TensorId> {
        let mut r = vec![self.x];
        if self.accumulate {
            r.push(self.out);
        }
        r
    }
    fn writes(&self) -> Vec<TensorId> {
        vec![self.out]
    }
    fn in_place(&self) -> Vec<TensorId> {
        if self.accumulate {
            vec![self.out]
        } else {
            Vec::new()
        }
    }
    fn lens(&self) -> Vec<(TensorId, usize)> {
        vec![(self.x, self.rows * self.cols), (self.out, self.cols)]
    }
    fn run_cpu(&self, h: &mut Host) -> Result<()> {
        h.update(self.out, |out, h| {
            cpu::sum_rows(h.get(self.x), out, self.rows, self.cols, self.accumulate)
        });
        Ok(())
    }
    fn lower(&self, lw: &mut Lowerer) -> Result<Dispatch> {
        wgpu::sum_rows(self, lw)
    }
    fn lower_split(&self, lw: &mut Lowerer) -> Result<Vec<Dispatch>> {
        if lw.bytes(self.out) > lw.max_binding() {
            return Err(lw.refuse(" (its output is too large)"));
        }
        // Later windows add to what the earlier ones summed.
        lw.row_windows(self.rows, &[(self.x, self.cols)], |lw, first, rows| {
            let part = SumRows {
                rows,
                accumulate: self.accumulate || first > 0,
                ..*self
            };
            wgpu::sum_rows(&part, lw)
        })
    }
}
