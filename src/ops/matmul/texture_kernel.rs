//! The matmul kernel for CPU-backed adapters (lavapipe and the like), generated as WGSL
//! because `subgroupBroadcast` needs constant lane indices, i.e. an unrolled inner step.
//!
//! Why a different kernel: such drivers run 8 invocations in the lanes of one SIMD register,
//! and a storage-buffer load whose address is not provably uniform becomes a per-lane loop
//! with a bounds-check branch per element, about ten instructions per float. A
//! `textureLoad` from an `rgba32float` storage texture is one branch-free call that
//! returns 16 bytes to every lane (about two instructions per float). So both operands are
//! read from texture mirrors (see `texture.rs`), and each fetched float is reused as much
//! as the register file allows:
//!
//! * lanes own adjacent groups of 4 columns of C; each lane gets `B[p, 4 columns]` (one
//!   texel, or for a transposed `B` four texels whose 4×4 block is transposed by
//!   renaming registers) and multiplies it into `ROWS` rows of vec4 accumulators;
//! * the rows are shared by the 8 lanes, so `A` is fetched cooperatively: each lane
//!   fetches a different texel of `A` and `subgroupBroadcast` hands each value to all
//!   lanes (one fetch per 32 values instead of 8 redundant ones). Without subgroups every
//!   lane fetches the texels itself.
//!
//! Each loop iteration covers 8 values of k. Fetches are calls that clobber every vector
//! register, so all of an iteration's fetches come before its multiply-adds. The loop is
//! not unrolled further: the driver compiles shaders at first use, and larger bodies
//! compiled much slower with no gain in speed.
//!
//! Workgroups along x walk down the rows of C, so consecutive workgroups reuse the same
//! strip of `B` (the bigger stream) while it is still in cache.
//!
//! The epilogue (bias, activation, activation derivative, accumulation) is chosen at run
//! time from the dims uniform: it runs once per output, and fewer of these large shaders
//! means less compiling before the first step.
//!
//! Mirror layout: row `r` of a matrix `[rows, cols]` is texture row `r`, `ceil(cols/4)`
//! texels zero-padded at the end. Texture rows are a little wider than that when the
//! width would be a multiple of 64 texels: the kernel reads the same column of 32 rows at
//! once, and at a power-of-two stride those all compete for the same few cache sets (the
//! transposed forms ran at half speed for k = 512, 1024, 2048). `A` is mirrored as
//! `[m, k]` (transposed into the mirror if need be), `B` as stored, `[k, n]` or `[n, k]`.
//! Mirrors have
//! `MIRROR_SLACK_ROWS` zero rows past the data, so the last iteration may read past `k`
//! without masking `B`; values of `A` past `k` are masked to zero, which cancels whatever
//! (finite) values `B` has there.

use crate::device::{Shader, Slot};
use crate::ops::activation::wgpu::FUNCTIONS;
use crate::ops::Activation;
use std::fmt::Write as _;

/// Rows of C per workgroup (a multiple of 4, so a transposed `A` texel covers 4 of them).
pub const ROWS: u32 = 8;
/// Invocations per workgroup: subgroups of 8 side by side along the columns of C. (16
/// measured no faster on lavapipe.)
pub const LANES: u32 = 8;
/// Columns of C per workgroup: one texel of 4 columns per invocation.
pub const COLS: u32 = 4 * LANES;
/// Extra zero rows a mirror keeps past its data (see the module docs): one iteration
/// reads up to 8 values of k, i.e. 2 texels, past the last.
pub const MIRROR_SLACK_ROWS: usize = 8;

/// Work folded into the store of C, replacing the elementwise ops that would follow it
/// (each of which costs a full pass over the matrix on a CPU-backed adapter).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Epilogue {
    /// `C = A·B` (or `+=`).
    Plain,
    /// `C = A·B + bias[col]` (binding 4: bias), and with an activation also `H = act(C)`
    /// (binding 5: H). A layer's forward `MatMul`, `AddBias` and `Activate`.
    Bias { act: Option<Activation> },
    /// `C = A·B`, and `DX = C ⊙ act'(X, Y)` (bindings 4: X, 5: Y, 6: DX). A hidden layer's
    /// backward `MatMul` for `dH` and its `ActivateBackward`.
    ActGrad { act: Activation },
    /// `C = Aᵀ·B`, and `S[i] = Σ_p A[p, i]`, the row sums of `Aᵀ` (binding 5: S). A
    /// layer's weight gradient `dW = dZᵀ·X` and its bias gradient, the `SumRows` of `dZ`
    /// that follows it (tiled kernel), or a later `SumRowsGroup`'s (texture kernel, see
    /// `absorb.rs`).
    RowSums,
}

impl Epilogue {
    /// The `epilogue` and `act` fields of the dims uniform.
    pub fn codes(self) -> [u32; 2] {
        match self {
            Epilogue::Plain => [0, 0],
            Epilogue::Bias { act: None } => [1, 0],
            Epilogue::Bias { act: Some(a) } => [2, a.kernel_id()],
            Epilogue::ActGrad { act } => [3, act.kernel_id()],
            Epilogue::RowSums => [4, 0],
        }
    }
}

/// Which kernel to generate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TexKernel {
    /// `B` is stored `[n, k]` (else `[k, n]`). `A` is always `[m, k]`: a transposed `A` is
    /// transposed into its mirror (see `texture.rs`).
    pub trans_b: bool,
    /// Share `A` fetches across the 8 lanes of a subgroup (needs subgroups of exactly 8).
    pub subgroup: bool,
}

const XYZW: [&str; 4] = ["x", "y", "z", "w"];

crate::uniform! {
    /// `pitch_a`: texels per row of the A mirror with data; `epilogue`, `act`: see
    /// [`Epilogue::codes`]; `mirror_out`: see `OUT_MIRRORS`; `a_row0`: the mirror row of A for row 0 of C (C may be a
    /// window of rows of a larger matrix).
    pub struct Dims {
        m: u32,
        k: u32,
        n: u32,
        pitch_a: u32,
        accumulate: u32,
        epilogue: u32,
        act: u32,
        a_row0: u32,
        mirror_out: u32,
        guard: u32,
        slot_c: u32,
        slot_sum: u32,
        peaks: u32,
        update: u32,
        weight_decay: f32,
        _pad0: u32,
    }
}

pub const MIRROR_A: Slot = Slot::texture(1, "mirror_a");
pub const MIRROR_B: Slot = Slot::texture(2, "mirror_b");
pub const C: Slot = Slot::read_write(3, "c");
/// The epilogue's buffers (see [`Epilogue`]).
pub const EPILOGUE_SLOTS: [Slot; 3] = [
    Slot::read(4, "e0"),
    Slot::read_write(5, "e1"),
    Slot::read_write(6, "e2"),
];
/// The mirrors of the epilogue's last output the kernel also writes, plain and
/// transposed (see `Dims::mirror_out`): four storage textures in all, WebGPU's default
/// limit per stage.
pub const OUT_MIRRORS: [Slot; 2] = [
    Slot::texture(7, "out_mirror"),
    Slot::texture(8, "out_mirror_t"),
];
/// The non-finite guard's flags and step counter (see `Dims::guard` and `absorb.rs`).
pub const FLAGS: Slot = Slot::read_write(9, "flags");
pub const STEP_BITS: Slot = Slot::read(10, "step_bits");
/// The parameters plain SGD updates with C and with the row sums (`Dims::update`), and
/// the hyper-parameters (`crate::tensor::Hyper`) with the learning rate: 8 storage
/// buffers in all, WebGPU's default limit per stage.
pub const PARAM_C: Slot = Slot::read_write(11, "param_c");
pub const PARAM_SUM: Slot = Slot::read_write(12, "param_sum");
pub const HYPER: Slot = Slot::uniform(13, "hyper");

// Each lane of a workgroup sums one row of A for the bias gradient (`row_sum`).
const _: () = assert!(ROWS == LANES);

impl TexKernel {
    /// Every kernel this generator makes.
    pub const ALL: [TexKernel; 4] = [
        TexKernel {
            trans_b: false,
            subgroup: false,
        },
        TexKernel {
            trans_b: true,
            subgroup: false,
        },
        TexKernel {
            trans_b: false,
            subgroup: true,
        },
        TexKernel {
            trans_b: true,
            subgroup: true,
        },
    ];

    pub fn shader(&self) -> Shader {
        Shader {
            name: "matmul/texture",
            body: std::borrow::Cow::Owned(self.source()),
            over_elements: false,
        }
    }

    /// WGSL source. Bindings: 0 dims, 1 `A` mirror, 2 `B` mirror, 3 C, 4–6 epilogue
    /// buffers (see [`Epilogue`]; unused ones get placeholders). Dims: `m, k, n, pitch_a,
    /// accumulate, epilogue, act, a_row0`.
    pub fn source(&self) -> String {
        let rm = ROWS as usize;
        let mut s = format!("const ROWS: u32 = {ROWS}u;\nconst LANES: u32 = {LANES}u;\n");
        s.push_str(PRELUDE);
        s.push_str(FUNCTIONS);
        s.push_str(EPILOGUE);
        s.push_str(GUARD_MARK);
        s.push_str(
            "\n@compute @workgroup_size(LANES)\n\
             fn main(@builtin(workgroup_id) wg: vec3<u32>, \
             @builtin(local_invocation_id) lid: vec3<u32>) {\n\
             \x20   ACT = dims.act;\n\
             \x20   let lane = lid.x % 8u;\n\
             \x20   let row0 = wg.x * ROWS;\n\
             \x20   let jt = min(wg.y * LANES + lid.x, (dims.n + 3u) / 4u - 1u);\n",
        );
        for r in 0..rm {
            let _ = writeln!(s, "    var acc{r} = vec4<f32>(0.0);");
        }
        // Ragged rows and columns are clamped onto the last one; their results are
        // never stored.
        if self.subgroup {
            // Lane l fetches row 4f + l/2, texel t + l%2: 8 texels of 4 rows per fetch.
            for f in 0..rm / 4 {
                let _ = writeln!(
                    s,
                    "    let ra{f} = min(row0 + {}u + lane / 2u, dims.m - 1u);",
                    4 * f
                );
            }
        } else {
            for r in 0..rm {
                let _ = writeln!(s, "    let ra{r} = min(row0 + {r}u, dims.m - 1u);");
            }
        }
        if self.trans_b {
            // B is stored [n, k]: the lane's 4 columns are 4 rows of the mirror.
            for c in 0..4 {
                let _ = writeln!(s, "    let rb{c} = min(jt * 4u + {c}u, dims.n - 1u);");
            }
        }
        // Each iteration handles 8 values of k: two texels along k.
        s.push_str(
            "    for (var p0 = 0u; p0 < dims.k; p0 += 8u) {\n\
             \x20       let t = p0 / 4u;\n",
        );
        self.fetch_a(&mut s);
        self.fetch_b(&mut s);
        for q in 0..8 {
            for r in 0..rm {
                let _ = writeln!(
                    s,
                    "        acc{r} = fma(vec4<f32>({}), b{q}, acc{r});",
                    self.a_value(q, r)
                );
            }
        }
        // An invocation whose columns were clamped onto the last texel stores nothing: a
        // second store of the same outputs would add twice when accumulating. The first
        // column of workgroups sums A's rows first where asked.
        s.push_str(
            "    }\n    if dims.epilogue == 4u && wg.y == 0u {\n        row_sum(row0 + lid.x);\n    }\n\
             \x20   if wg.y * LANES + lid.x > jt {\n        return;\n    }\n\
             \x20   finish(row0, jt * 4u, array<vec4<f32>, ROWS>(",
        );
        let accs: Vec<String> = (0..rm).map(|r| format!("acc{r}")).collect();
        s.push_str(&accs.join(", "));
        s.push_str("));\n}\n");
        s
    }

    /// The `A` values of one iteration. Values past `k` must be zero: past a row's end
    /// the mirror holds padding or nothing (the `B` side may then hold anything finite).
    fn fetch_a(&self, s: &mut String) {
        if self.subgroup {
            s.push_str("        let live = t + lane % 2u < dims.pitch_a;\n");
            for f in 0..ROWS / 4 {
                let _ = writeln!(
                    s,
                    "        let av{f} = select(vec4<f32>(0.0), tex_a(t + lane % 2u, ra{f}), live);"
                );
            }
        } else {
            s.push_str("        let live = t + 1u < dims.pitch_a;\n");
            for r in 0..ROWS {
                let _ = writeln!(s, "        let av{r}_0 = tex_a(t, ra{r});");
                let _ = writeln!(
                    s,
                    "        let av{r}_1 = select(vec4<f32>(0.0), tex_a(t + 1u, ra{r}), live);"
                );
            }
        }
    }

    /// `b0 .. b7`: the lane's 4 columns of `B` at k = p0 .. p0 + 7. The mirror has zero
    /// rows past `k`, so these need no mask.
    fn fetch_b(&self, s: &mut String) {
        if self.trans_b {
            // A texel holds 4 values of k for one column; the 4×4 block of texels is
            // transposed by renaming, which costs nothing with lanes across registers.
            for e in 0..2 {
                for c in 0..4 {
                    let _ = writeln!(s, "        let tb{e}{c} = tex_b(t + {e}u, rb{c});");
                }
            }
            for q in 0..8 {
                let (e, x) = (q / 4, XYZW[q % 4]);
                let _ = writeln!(
                    s,
                    "        let b{q} = vec4<f32>(tb{e}0.{x}, tb{e}1.{x}, tb{e}2.{x}, tb{e}3.{x});"
                );
            }
        } else {
            for q in 0..8 {
                let _ = writeln!(s, "        let b{q} = tex_b(jt, p0 + {q}u);");
            }
        }
    }

    /// The expression for `A[row0 + r, p0 + q]`.
    fn a_value(&self, q: usize, r: usize) -> String {
        if self.subgroup {
            format!(
                "subgroupBroadcast(av{}.{}, {}u)",
                r / 4,
                XYZW[q % 4],
                2 * (r % 4) + q / 4
            )
        } else {
            format!("av{r}_{}.{}", q / 4, XYZW[q % 4])
        }
    }
}

const PRELUDE: &str = "\
struct Dims {
    m: u32,
    k: u32,
    n: u32,
    // Texels per row of the A mirror with data: ceil(k / 4).
    pitch_a: u32,
    accumulate: u32,
    // 0 plain, 1 bias, 2 bias and activation, 3 activation derivative (`Epilogue`).
    epilogue: u32,
    act: u32,
    // Mirror row of A for row 0 of C: C may be a window of rows of a larger matrix
    // (one larger than a storage binding).
    a_row0: u32,
    // Bit 0: also store the last output into out_mirror, bit 1: its transpose into
    // out_mirror_t (texture.rs: `produce`).
    mirror_out: u32,
    // Bit 0: guard C, bit 1: guard the row sums (`ops::health::GuardFinite`, see
    // shaders/health/guard.wgsl), at flag slots slot_c and slot_sum; peaks: where the
    // peaks start in `flags`.
    guard: u32,
    slot_c: u32,
    slot_sum: u32,
    peaks: u32,
    // Bit 0: param_c -= lr·(C + weight_decay·param_c), bit 1: the same for param_sum
    // with the row sums (`ops::optim::SgdGroup`'s arithmetic).
    update: u32,
    weight_decay: f32,
    _pad0: u32,
}

// `crate::tensor::Hyper`: only the learning rate matters to plain SGD.
struct Hyper {
    lr: f32,
    momentum: f32,
    ln_momentum: f32,
    cycled: f32,
}

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var mirror_a: texture_storage_2d<rgba32float, read>;
@group(0) @binding(2) var mirror_b: texture_storage_2d<rgba32float, read>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
@group(0) @binding(4) var<storage, read> e0: array<f32>;
@group(0) @binding(5) var<storage, read_write> e1: array<f32>;
@group(0) @binding(6) var<storage, read_write> e2: array<f32>;
@group(0) @binding(7) var out_mirror: texture_storage_2d<rgba32float, write>;
@group(0) @binding(8) var out_mirror_t: texture_storage_2d<rgba32float, write>;
@group(0) @binding(9) var<storage, read_write> flags: array<atomic<u32>>;
@group(0) @binding(10) var<storage, read> step_bits: array<u32>;
@group(0) @binding(11) var<storage, read_write> param_c: array<f32>;
@group(0) @binding(12) var<storage, read_write> param_sum: array<f32>;
@group(0) @binding(13) var<uniform> hyper: Hyper;

// Read by the activation functions (shaders/activation/functions.wgsl); set from
// dims.act. Fused activations have no parameters, so SLOPE and ALPHA are placeholders.
var<private> ACT: u32;
const SLOPE: f32 = 0.0;
const ALPHA: f32 = 1.0;

// Texel `x` of row `y` of a mirror.
fn tex_a(x: u32, y: u32) -> vec4<f32> {
    return textureLoad(mirror_a, vec2<u32>(x, y + dims.a_row0));
}

fn tex_b(x: u32, y: u32) -> vec4<f32> {
    return textureLoad(mirror_b, vec2<u32>(x, y));
}

";

const GUARD_MARK: &str = include_str!("../../../shaders/health/mark.wgsl");

const EPILOGUE: &str = "
// Stores rows row0 .. row0 + ROWS - 1 of columns col .. col + 3, applying the epilogue,
// and the epilogue's last output (C, H or DX) into the mirrors `dims.mirror_out` names.
fn finish(row0: u32, col: u32, acc: array<vec4<f32>, ROWS>) {
    var bias = vec4<f32>(0.0);
    if dims.epilogue == 1u || dims.epilogue == 2u {
        for (var j = 0u; j < 4u; j++) {
            if col + j < dims.n {
                bias[j] = e0[col + j];
            }
        }
    }
    // Mirror texels past m or n must hold zeros (see the module docs).
    var last: array<vec4<f32>, ROWS>;
    var seen = vec2<u32>(0u);
    for (var r = 0u; r < ROWS; r++) {
        let row = row0 + r;
        if row >= dims.m {
            break;
        }
        for (var j = 0u; j < 4u; j++) {
            if col + j < dims.n {
                let idx = row * dims.n + col + j;
                var out = acc[r][j] + bias[j];
                if dims.accumulate != 0u {
                    out += c[idx];
                }
                c[idx] = out;
                seen = guard_see(seen, out);
                if (dims.update & 1u) != 0u {
                    param_c[idx] -= hyper.lr * (out + dims.weight_decay * param_c[idx]);
                }
                if dims.epilogue == 2u {
                    out = act(out);
                    e1[idx] = out;
                } else if dims.epilogue == 3u {
                    out = out * act_grad(e0[idx], e1[idx]);
                    e2[idx] = out;
                }
                last[r][j] = out;
            }
        }
        if (dims.mirror_out & 1u) != 0u {
            textureStore(out_mirror, vec2<u32>(col / 4u, row), last[r]);
        }
    }
    if (dims.guard & 1u) != 0u {
        guard_mark(dims.slot_c, seen);
    }
    if (dims.mirror_out & 2u) == 0u {
        return;
    }
    // Transposed, a texel holds 4 rows of one column.
    for (var h = 0u; h < ROWS / 4u; h++) {
        if row0 + 4u * h >= dims.m {
            break;
        }
        for (var j = 0u; j < 4u; j++) {
            if col + j < dims.n {
                let t = vec4<f32>(last[4u * h][j], last[4u * h + 1u][j],
                                  last[4u * h + 2u][j], last[4u * h + 3u][j]);
                textureStore(out_mirror_t, vec2<u32>(row0 / 4u + h, col + j), t);
            }
        }
    }
}

// The bias gradient of a weight gradient C = Aᵀ·B (epilogue 4): e1[row] = the sum of
// row `row` of A's mirror, i.e. of column `row` of the stored A (zero-padded past k).
fn row_sum(row: u32) {
    if row >= dims.m {
        return;
    }
    var s = 0.0;
    for (var t = 0u; t < dims.pitch_a; t++) {
        let v = tex_a(t, row);
        s += (v.x + v.y) + (v.z + v.w);
    }
    e1[row] = s;
    if (dims.update & 2u) != 0u {
        param_sum[row] -= hyper.lr * (s + dims.weight_decay * param_sum[row]);
    }
    if (dims.guard & 2u) != 0u {
        guard_mark(dims.slot_sum, guard_see(vec2<u32>(0u), s));
    }
}
";
