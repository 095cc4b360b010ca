// Up to four bias gradients in one dispatch (`ops::bias::SumRowsGroup`): each a column sum
// over the batch, `dst[c] = Σ_r src[r,c]`, as `sum_rows` in bias.wgsl computes it (one
// invocation per column, rows in order). Grouped because on small models launching a
// dispatch per layer cost more than the sums. `V` is `f32` or `vec4<f32>`; the column
// counts in `dims` count `V`s, 0 for an unused place.

struct Dims {
    rows: u32,
    rows2: u32,
    rows3: u32,
    rows4: u32,
    cols: u32,
    cols2: u32,
    cols3: u32,
    cols4: u32,
}

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read> src: array<V>;
@group(0) @binding(2) var<storage, read_write> dst: array<V>;
@group(0) @binding(3) var<storage, read> src2: array<V>;
@group(0) @binding(4) var<storage, read_write> dst2: array<V>;
@group(0) @binding(5) var<storage, read> src3: array<V>;
@group(0) @binding(6) var<storage, read_write> dst3: array<V>;
@group(0) @binding(7) var<storage, read> src4: array<V>;
@group(0) @binding(8) var<storage, read_write> dst4: array<V>;

const COLS_WG: u32 = 64u;

@compute @workgroup_size(64)
fn sum_rows_group(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let col = (wg.y * nwg.x + wg.x) * COLS_WG + lid;
    if col < dims.cols {
        var acc = V(0.0);
        for (var r = 0u; r < dims.rows; r++) {
            acc += src[r * dims.cols + col];
        }
        dst[col] = acc;
    }
    if col < dims.cols2 {
        var acc = V(0.0);
        for (var r = 0u; r < dims.rows2; r++) {
            acc += src2[r * dims.cols2 + col];
        }
        dst2[col] = acc;
    }
    if col < dims.cols3 {
        var acc = V(0.0);
        for (var r = 0u; r < dims.rows3; r++) {
            acc += src3[r * dims.cols3 + col];
        }
        dst3[col] = acc;
    }
    if col < dims.cols4 {
        var acc = V(0.0);
        for (var r = 0u; r < dims.rows4; r++) {
            acc += src4[r * dims.cols4 + col];
        }
        dst4[col] = acc;
    }
}
