//! The matmul kernel for CPU-backed adapters (lavapipe and the like), generated as WGSL
//! because `subgroupBroadcast` needs constant lane indices, i.e. an unrolled inner block.
//!
//! Why a different kernel: such drivers run 8 invocations in the lanes of one SIMD register,
//! and a storage-buffer load whose address is not provably uniform becomes a per-lane loop
//! with a bounds-check branch per element, about ten instructions per float. A
//! `textureLoad` from an `rgba32float` storage texture is one branch-free call that
//! returns 16 bytes to every lane (about two instructions per float). So both operands are
//! read from texture mirrors (see `engine.rs`), and each fetched float is reused as much
//! as the register file allows:
//!
//! * lanes own adjacent groups of 4 columns of C; each lane fetches `B[p, 4 columns]`
//!   and multiplies it into `ROWS` rows of vec4 accumulators;
//! * the rows are shared by the 8 lanes, so `A` is fetched cooperatively: lane `l`
//!   fetches a different texel of `A` and `subgroupBroadcast` hands each value to all
//!   lanes (one fetch per 32 values instead of 8 redundant ones). Without subgroups every
//!   lane fetches the texel itself.
//!
//! Fetches are calls that clobber every vector register, so the 8 `B` texels of a step
//! are fetched before the multiply-adds that use them. Loops are kept rather than fully
//! unrolled: the driver compiles shaders at first use, and a 4× smaller body compiles
//! about twice as fast at the same speed.
//!
//! Workgroups along x walk down the rows of C, so consecutive workgroups reuse the same
//! strip of `B` (the bigger stream) while it is still in cache.
//!
//! The epilogue (bias, activation, activation derivative, accumulation) is chosen at run
//! time from the dims uniform: it runs once per output, and one kernel per `trans_a`
//! keeps the number of these large shaders, and so the first step's compile time, low.
//!
//! Mirror layout: a matrix `[rows, cols]` is stored row-major with `pitch = ceil(cols/4)`
//! texels per row, padded with zeros, and texel `t` of that flat sequence lives at
//! `(t & (2^shift - 1), t >> shift)`. The `B` mirror is always `[k, n]`; `A` is `[m, k]`, or
//! `[k, m]` when `trans_a` (the kernel reads it transposed directly). Mirrors have
//! `MIRROR_SLACK_ROWS` zero rows past the data, so the last step along `k` may read past
//! `k` without masking `B`.

use crate::graph::Activation;
use std::fmt::Write as _;

/// Rows of C per workgroup (a multiple of 4, so a transposed `A` texel covers 4 of them).
pub const ROWS: u32 = 8;
/// Columns of C per workgroup: 8 lanes × one texel of 4 columns.
pub const COLS: u32 = 32;
/// Values of `k` per outer loop iteration when `A` is not transposed (8 lanes × 4
/// components), and the step `blocks` in the dims counts.
pub const BLOCK_K: u32 = 32;
/// Extra zero rows a mirror keeps past its data (see the module docs).
pub const MIRROR_SLACK_ROWS: usize = BLOCK_K as usize;

/// Work folded into the store of C, replacing the elementwise ops that would follow it
/// (each of which costs a full pass over the matrix on a CPU-backed adapter).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Epilogue {
    /// `C = A·B` (or `+=`).
    Plain,
    /// `C = A·B + bias[col]` (binding 4: bias), and with an activation also `H = act(C)`
    /// (binding 5: H). A layer's forward `MatMul`, `AddBias` and `Activate`.
    Bias { act: Option<Activation> },
    /// `C = A·B`, and `DX = C ⊙ act'(X, Y)` (bindings 4: X, 5: Y, 6: DX). A hidden layer's
    /// backward `MatMul` for `dH` and its `ActivateBackward`.
    ActGrad { act: Activation },
}

impl Epilogue {
    /// The `epilogue` and `act` fields of the dims uniform.
    pub fn codes(self) -> [u32; 2] {
        match self {
            Epilogue::Plain => [0, 0],
            Epilogue::Bias { act: None } => [1, 0],
            Epilogue::Bias { act: Some(a) } => [2, a as u32],
            Epilogue::ActGrad { act } => [3, act as u32],
        }
    }
}

/// Which kernel to generate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TexKernel {
    pub trans_a: bool,
    /// Share `A` fetches across the 8 lanes of a subgroup (needs subgroups of exactly 8).
    pub subgroup: bool,
}

impl TexKernel {
    /// WGSL source. Bindings: 0 dims, 1 `A` mirror, 2 `B` mirror, 3 C, 4–6 epilogue
    /// buffers (see [`Epilogue`]; unused ones get placeholders). Dims: `m, k, n, pitch_a,
    /// pitch_b, shift_a, shift_b, blocks, accumulate, epilogue, act, _` with
    /// `blocks = ceil(k / 32)`.
    pub fn source(&self) -> String {
        let rm = ROWS as usize;
        let mut s = String::from(PRELUDE);
        s.push_str(include_str!("../../shaders/act_fn.wgsl"));
        s.push_str(EPILOGUE);
        s.push_str(
            "\n@compute @workgroup_size(8)\n\
             fn main(@builtin(workgroup_id) wg: vec3<u32>, \
             @builtin(local_invocation_id) lid: vec3<u32>) {\n\
             \x20   ACT = dims.act;\n\
             \x20   let lane = lid.x;\n\
             \x20   let row0 = wg.x * 8u;\n\
             \x20   let jt = min(wg.y * 8u + lane, dims.pitch_b - 1u);\n",
        );
        for r in 0..rm {
            let _ = writeln!(s, "    var acc{r} = vec4<f32>(0.0);");
        }
        if self.trans_a {
            // Texel g of a row of the [k, m] mirror holds rows row0 + 4g .. row0 + 4g + 3.
            for g in 0..rm / 4 {
                let _ = writeln!(s, "    let ca{g} = row0 / 4u + {g}u;");
            }
        } else {
            // Ragged rows are clamped onto the last one; their results are never stored.
            for r in 0..rm {
                let _ = writeln!(
                    s,
                    "    let ra{r} = min(row0 + {r}u, dims.m - 1u) * dims.pitch_a;"
                );
            }
        }
        match (self.subgroup, self.trans_a) {
            (true, false) => self.body_coop(&mut s),
            (true, true) => self.body_coop_trans(&mut s),
            (false, false) => self.body_plain(&mut s),
            (false, true) => self.body_plain_trans(&mut s),
        }
        s.push_str("    finish(row0, jt * 4u, array<vec4<f32>, 8>(");
        let accs: Vec<String> = (0..rm).map(|r| format!("acc{r}")).collect();
        s.push_str(&accs.join(", "));
        s.push_str("));\n}\n");
        s
    }

    /// One step of 8 values of `k`: the 8 `B` texels at rows `b_row(q)`, then
    /// `acc_r += a(q, r) · b_q` for every q and row (both WGSL expressions).
    fn step(
        &self,
        s: &mut String,
        indent: &str,
        b_row: impl Fn(usize) -> String,
        a: impl Fn(usize, usize) -> String,
    ) {
        for q in 0..8 {
            let _ = writeln!(
                s,
                "{indent}let b{q} = tex_b(({}) * dims.pitch_b + jt);",
                b_row(q)
            );
        }
        for q in 0..8 {
            for r in 0..ROWS as usize {
                let _ = writeln!(
                    s,
                    "{indent}acc{r} = fma(vec4<f32>({}), b{q}, acc{r});",
                    a(q, r)
                );
            }
        }
    }

    /// Lane l holds `A[row, p0 + 4l .. p0 + 4l + 3]`; component c of lane q is `k = p0 +
    /// 4q + c`. Texels past a row's end belong to the next row, so they are zeroed.
    fn body_coop(&self, s: &mut String) {
        s.push_str(
            "    for (var blk = 0u; blk < dims.blocks; blk++) {\n\
             \x20       let t0 = blk * 8u;\n\
             \x20       let p0 = blk * 32u;\n\
             \x20       let live = t0 + lane < dims.pitch_a;\n",
        );
        for r in 0..ROWS {
            let _ = writeln!(
                s,
                "        let av{r} = select(vec4<f32>(0.0), tex_a(ra{r} + t0 + lane), live);"
            );
        }
        s.push_str("        for (var c = 0u; c < 4u; c++) {\n");
        self.step(
            s,
            "            ",
            |q| format!("p0 + {}u + c", 4 * q),
            |q, r| format!("subgroupBroadcast(av{r}[c], {q}u)"),
        );
        s.push_str("        }\n    }\n");
    }

    /// Lane l holds rows `row0 + 4g .. + 3` at `k = p0 + l`, 8 values of `k` per step.
    fn body_coop_trans(&self, s: &mut String) {
        s.push_str(
            "    for (var p0 = 0u; p0 < dims.k; p0 += 8u) {\n\
             \x20       let pa = p0 + lane;\n",
        );
        for g in 0..ROWS / 4 {
            let _ = writeln!(
                s,
                "        let av{g} = select(vec4<f32>(0.0), \
                 tex_a(pa * dims.pitch_a + ca{g}), pa < dims.k);"
            );
        }
        self.step(
            s,
            "        ",
            |q| format!("p0 + {q}u"),
            |q, r| format!("subgroupBroadcast(av{}[{}], {q}u)", r / 4, r % 4),
        );
        s.push_str("    }\n");
    }

    /// Every lane fetches the same `A` texels: 2 texels of 4 values of `k` per row.
    fn body_plain(&self, s: &mut String) {
        s.push_str(
            "    for (var t0 = 0u; t0 < dims.pitch_a; t0 += 2u) {\n\
             \x20       let live = t0 + 1u < dims.pitch_a;\n",
        );
        for r in 0..ROWS {
            let _ = writeln!(s, "        let av{r}_0 = tex_a(ra{r} + t0);");
            let _ = writeln!(
                s,
                "        let av{r}_1 = select(vec4<f32>(0.0), tex_a(ra{r} + t0 + 1u), live);"
            );
        }
        self.step(
            s,
            "        ",
            |q| format!("t0 * 4u + {q}u"),
            |q, r| format!("av{r}_{}[{}]", q / 4, q % 4),
        );
        s.push_str("    }\n");
    }

    /// Every lane fetches the same `A` texels: 8 values of `k` per step.
    fn body_plain_trans(&self, s: &mut String) {
        s.push_str("    for (var p0 = 0u; p0 < dims.k; p0 += 8u) {\n");
        for q in 0..8 {
            for g in 0..ROWS / 4 {
                let _ = writeln!(
                    s,
                    "        let av{q}_{g} = select(vec4<f32>(0.0), \
                     tex_a((p0 + {q}u) * dims.pitch_a + ca{g}), p0 + {q}u < dims.k);"
                );
            }
        }
        self.step(
            s,
            "        ",
            |q| format!("p0 + {q}u"),
            |q, r| format!("av{q}_{}[{}]", r / 4, r % 4),
        );
        s.push_str("    }\n");
    }
}

const PRELUDE: &str = "\
struct Dims {
    m: u32,
    k: u32,
    n: u32,
    pitch_a: u32,
    pitch_b: u32,
    shift_a: u32,
    shift_b: u32,
    blocks: u32,
    accumulate: u32,
    // 0 plain, 1 bias, 2 bias and activation, 3 activation derivative (`Epilogue`).
    epilogue: u32,
    act: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var mirror_a: texture_storage_2d<rgba32float, read>;
@group(0) @binding(2) var mirror_b: texture_storage_2d<rgba32float, read>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
@group(0) @binding(4) var<storage, read> e0: array<f32>;
@group(0) @binding(5) var<storage, read_write> e1: array<f32>;
@group(0) @binding(6) var<storage, read_write> e2: array<f32>;

// Read by act_fn.wgsl; set from dims.act.
var<private> ACT: u32;

fn tex_a(t: u32) -> vec4<f32> {
    return textureLoad(mirror_a, vec2<u32>(t & ((1u << dims.shift_a) - 1u), t >> dims.shift_a));
}

fn tex_b(t: u32) -> vec4<f32> {
    return textureLoad(mirror_b, vec2<u32>(t & ((1u << dims.shift_b) - 1u), t >> dims.shift_b));
}

";

const EPILOGUE: &str = "
// Stores rows row0 .. row0 + 7 of columns col .. col + 3, applying the epilogue.
fn finish(row0: u32, col: u32, acc: array<vec4<f32>, 8>) {
    var bias = vec4<f32>(0.0);
    if dims.epilogue == 1u || dims.epilogue == 2u {
        for (var j = 0u; j < 4u; j++) {
            if col + j < dims.n {
                bias[j] = e0[col + j];
            }
        }
    }
    for (var r = 0u; r < 8u; r++) {
        let row = row0 + r;
        if row >= dims.m {
            return;
        }
        for (var j = 0u; j < 4u; j++) {
            if col + j < dims.n {
                let idx = row * dims.n + col + j;
                var out = acc[r][j] + bias[j];
                if dims.accumulate != 0u {
                    out += c[idx];
                }
                c[idx] = out;
                if dims.epilogue == 2u {
                    e1[idx] = act(out);
                } else if dims.epilogue == 3u {
                    e2[idx] = out * act_grad(e0[idx], e1[idx]);
                }
            }
        }
    }
}
";
