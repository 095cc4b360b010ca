//! Matrix products, `c (+)= op(a)·op(b)`: the linear layer's forward pass and both of its
//! gradients. Three kernels: `reg4x4` and `tiled` read storage buffers (`wgpu.rs`; the
//! tiled kernel's block sizes are tuned per shape class, `tune.rs`); the
//! texture kernel of CPU-backed adapters reads texture mirrors and fuses the bias,
//! activation and activation-derivative ops that follow it (`texture.rs`, with the
//! generated WGSL in `texture_kernel.rs`).

pub mod absorb;
pub mod cpu;
pub mod pack_pair;
pub mod texture;
pub mod texture_kernel;
pub mod tune;
pub mod wgpu;

use super::{Host, Op, Operation};
use crate::device::{Dispatch, Lowerer, Step};
use crate::tensor::TensorId;
use anyhow::Result;

/// `c[m,n] (+)= op(a) · op(b)` with `op(a)` of shape `[m,k]` (stored `[k,m]` when
/// `trans_a`) and `op(b)` of shape `[k,n]` (stored `[n,k]` when `trans_b`). The
/// transposed forms let backward compute `dX = dY·W` and `dW = dYᵀ·X` without
/// materialising a transpose.
#[derive(Clone, Debug, PartialEq)]
pub struct MatMul {
    pub a: TensorId,
    pub b: TensorId,
    pub c: TensorId,
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub accumulate: bool,
}

impl Operation for MatMul {
    fn reads(&self) -> Vec<TensorId> {
        let mut r = vec![self.a, self.b];
        if self.accumulate {
            r.push(self.c);
        }
        r
    }
    fn writes(&self) -> Vec<TensorId> {
        vec![self.c]
    }
    fn in_place(&self) -> Vec<TensorId> {
        if self.accumulate {
            vec![self.c]
        } else {
            Vec::new()
        }
    }
    fn lens(&self) -> Vec<(TensorId, usize)> {
        let (m, k, n) = (self.m, self.k, self.n);
        vec![(self.a, m * k), (self.b, k * n), (self.c, m * n)]
    }
    /// E.g. `MatMul[256×784×512 Bᵀ]`.
    fn label(&self) -> String {
        format!(
            "MatMul[{}×{}×{}{}{}{}]",
            self.m,
            self.k,
            self.n,
            if self.trans_a { " Aᵀ" } else { "" },
            if self.trans_b { " Bᵀ" } else { "" },
            if self.accumulate { " +=" } else { "" }
        )
    }
    fn run_cpu(&self, h: &mut Host) -> Result<()> {
        h.update(self.c, |c, h| {
            let (a, b) = (h.get(self.a), h.get(self.b));
            let (m, k, n) = (self.m, self.k, self.n);
            cpu::matmul(
                a,
                b,
                c,
                m,
                k,
                n,
                self.trans_a,
                self.trans_b,
                self.accumulate,
            )
        });
        Ok(())
    }
    fn lower(&self, lw: &mut Lowerer) -> Result<Dispatch> {
        wgpu::matmul(self, lw)
    }
    fn lower_split(&self, lw: &mut Lowerer) -> Result<Vec<Dispatch>> {
        wgpu::matmul_windows(self, lw)
    }
    fn lower_fused(
        &self,
        lw: &mut Lowerer,
        following: &[Op],
    ) -> Result<Option<(Vec<Step>, usize)>> {
        match texture::lower(self, lw, following)? {
            Some(fused) => Ok(Some(fused)),
            None => wgpu::lower_fused(self, lw, following),
        }
    }
}
