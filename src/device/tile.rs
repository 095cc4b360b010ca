//! The named block configurations of the tiled matmul (`shaders/matmul/tiled.wgsl`), each a
//! set of its override constants, and the shape classes the autotuner
//! (`ops/matmul/tune.rs`) picks one for.

use anyhow::{bail, Result};
use std::fmt;

/// Block sizes of the tiled matmul: `bm×bn` outputs per workgroup, staged `bk` values of k
/// at a time, `tm×tn` outputs per invocation (`(bm/tm)·(bn/tn)` invocations).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MatmulTile {
    pub name: &'static str,
    pub bm: u32,
    pub bn: u32,
    pub bk: u32,
    pub tm: u32,
    pub tn: u32,
}

const fn tile(name: &'static str, bm: u32, bn: u32, bk: u32, tm: u32, tn: u32) -> MatmulTile {
    MatmulTile {
        name,
        bm,
        bn,
        bk,
        tm,
        tn,
    }
}

/// Largest `tm`/`tn`: the kernel's register arrays hold 8 values a side.
const MAX_PER_INVOCATION: u32 = 8;

impl MatmulTile {
    /// The kernel as it was before tuning, kept as the default where nothing is tuned.
    pub const DEFAULT: MatmulTile = tile("64x64-4x4", 64, 64, 16, 4, 4);

    /// Every configuration offered. The 128×128 blocks with 8×8 per invocation are the
    /// shape that reaches half of fp32 peak on NVIDIA parts in hand-written CUDA SGEMMs
    /// (64 multiply-adds per 16 shared-memory loads); the smaller ones keep enough
    /// workgroups in flight when C is small. All but the last fit WebGPU's default limits
    /// (16 KiB of workgroup memory, 256 invocations); the last needs 32 KiB, which
    /// desktop GPUs have, and is skipped where the device does not.
    pub const ALL: [MatmulTile; 7] = [
        MatmulTile::DEFAULT,
        tile("32x32-4x4", 32, 32, 16, 4, 4),
        tile("128x64-8x4", 128, 64, 16, 8, 4),
        tile("64x128-4x8", 64, 128, 16, 4, 8),
        tile("128x128-8x8", 128, 128, 8, 8, 8),
        tile("128x128-8x8-k16", 128, 128, 16, 8, 8),
        tile("128x128-8x8-k32", 128, 128, 32, 8, 8),
    ];

    /// Invocations per workgroup along x (columns) and y (rows).
    pub fn workgroup(&self) -> [u32; 2] {
        [self.bn / self.tn, self.bm / self.tm]
    }

    /// Bytes of workgroup memory: one `bk`-deep slice of each operand.
    pub fn workgroup_bytes(&self) -> u32 {
        4 * self.bk * (self.bm + self.bn)
    }

    /// The kernel's override constants.
    pub fn constants(&self) -> [(&'static str, u32); 5] {
        [
            ("TILE_BM", self.bm),
            ("TILE_BN", self.bn),
            ("TILE_BK", self.bk),
            ("TILE_TM", self.tm),
            ("TILE_TN", self.tn),
        ]
    }

    /// Whether the kernel can run this configuration on a device with `limits`; the error
    /// names the limit exceeded and the configurations that fit.
    pub fn check(&self, limits: &wgpu::Limits) -> Result<()> {
        match self.misfit(limits) {
            None => Ok(()),
            Some(why) => bail!(
                "{why} (pick another with --matmul-tile or STEADYGRAD_MATMUL_TILE: {})",
                Self::fitting(limits)
                    .map(|t| t.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// Why the kernel cannot run this configuration under `limits`, if it cannot.
    fn misfit(&self, limits: &wgpu::Limits) -> Option<String> {
        let name = self.name;
        let shaped = (1..=MAX_PER_INVOCATION).contains(&self.tm)
            && (1..=MAX_PER_INVOCATION).contains(&self.tn)
            && self.bm.is_multiple_of(self.tm)
            && self.bn.is_multiple_of(self.tn)
            && self.bk > 0;
        if !shaped {
            return Some(format!(
                "matmul tile {name}: per-invocation blocks must be 1..={MAX_PER_INVOCATION} \
                 and divide the workgroup block"
            ));
        }
        let [x, y] = self.workgroup();
        let threads = x * y;
        if threads > limits.max_compute_invocations_per_workgroup
            || x > limits.max_compute_workgroup_size_x
            || y > limits.max_compute_workgroup_size_y
        {
            return Some(format!(
                "matmul tile {name} needs workgroups of {x}×{y} = {threads} invocations; this \
                 device allows {} ({}×{} at most)",
                limits.max_compute_invocations_per_workgroup,
                limits.max_compute_workgroup_size_x,
                limits.max_compute_workgroup_size_y
            ));
        }
        let bytes = self.workgroup_bytes();
        (bytes > limits.max_compute_workgroup_storage_size).then(|| {
            format!(
                "matmul tile {name} needs {bytes} bytes of workgroup memory; this device \
                 allows {}",
                limits.max_compute_workgroup_storage_size
            )
        })
    }

    /// The configurations a device with `limits` can run.
    pub fn fitting(limits: &wgpu::Limits) -> impl Iterator<Item = MatmulTile> + '_ {
        Self::ALL.into_iter().filter(|t| t.misfit(limits).is_none())
    }

    pub fn by_name(name: &str) -> Result<MatmulTile> {
        match Self::ALL
            .iter()
            .find(|t| t.name.eq_ignore_ascii_case(name.trim()))
        {
            Some(t) => Ok(*t),
            None => bail!(
                "unknown matmul tile '{name}'; expected one of: {}",
                Self::ALL.map(|t| t.name).join(", ")
            ),
        }
    }
}

impl fmt::Display for MatmulTile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

impl std::str::FromStr for MatmulTile {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::by_name(s)
    }
}

/// Problems that share a tuned configuration: the same transpose form and each side in the
/// same power-of-two bucket (from 16 to 8192), so the layers of a deep net of one width
/// are tuned once and a cached choice applies to nearby shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShapeClass {
    pub trans_a: bool,
    pub trans_b: bool,
    /// Bucket bounds: the side rounded up to a power of two, within 16..=8192.
    pub m: u32,
    pub k: u32,
    pub n: u32,
}

fn bucket(side: usize) -> u32 {
    side.clamp(16, 8192).next_power_of_two() as u32
}

impl ShapeClass {
    pub fn of(m: usize, k: usize, n: usize, trans_a: bool, trans_b: bool) -> Self {
        ShapeClass {
            trans_a,
            trans_b,
            m: bucket(m),
            k: bucket(k),
            n: bucket(n),
        }
    }

    /// `nt`, `nn`, `tn` or `tt`: whether op(A) and op(B) are transposed.
    pub fn form(&self) -> &'static str {
        match (self.trans_a, self.trans_b) {
            (false, true) => "nt",
            (false, false) => "nn",
            (true, false) => "tn",
            (true, true) => "tt",
        }
    }
}

/// E.g. `nt 256×1024×512`: the form and the buckets of m, k and n.
impl fmt::Display for ShapeClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}×{}×{}", self.form(), self.m, self.k, self.n)
    }
}
