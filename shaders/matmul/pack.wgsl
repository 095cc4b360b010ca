// Copies a row-major matrix [rows, cols] from a buffer into a texture mirror for the
// CPU-adapter matmul (see src/ops/matmul/texture_kernel.rs for the layout), one matrix row per
// texture row, padded to whole texels, or transposed (TRANSPOSE, and the entry point
// transpose4). Used where a buffer-to-texture copy cannot be: rows that are not a
// multiple of 256 bytes, or a transpose.
//
// A matrix larger than one storage binding is packed in windows of its rows: `src` is
// then bound from row `row0` (a multiple of 4) and `rows` counts the window's rows.

override TRANSPOSE: bool = false;

struct Dims {
    rows: u32,
    cols: u32,
    // Texels of data per row of the mirror: ceil(cols / 4) (TRANSPOSE: ceil(rows / 4)).
    pitch: u32,
    row0: u32,
}

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var dst: texture_storage_2d<rgba32float, write>;

// One invocation per texel of the mirror: x is the texel within a row, y the row.
@compute @workgroup_size(64)
fn pack(@builtin(global_invocation_id) gid: vec3<u32>) {
    var out_rows = dims.rows;
    var out_cols = dims.cols;
    if TRANSPOSE {
        out_rows = dims.cols;
        out_cols = dims.rows;
    }
    let row = gid.y;
    let texel = gid.x;
    if texel >= dims.pitch || row >= out_rows {
        return;
    }
    var v = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        let col = texel * 4u + j;
        if col < out_cols {
            if TRANSPOSE {
                v[j] = src[col * dims.cols + row];
            } else {
                v[j] = src[row * dims.cols + col];
            }
        }
    }
    if TRANSPOSE {
        textureStore(dst, vec2<u32>(texel + dims.row0 / 4u, row), v);
    } else {
        textureStore(dst, vec2<u32>(texel, row + dims.row0), v);
    }
}

// The same for rows of a multiple of 4 values: one vector load per texel.
@group(0) @binding(3) var<storage, read> src4: array<vec4<f32>>;

@compute @workgroup_size(64)
fn pack4(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row = gid.y;
    let texel = gid.x;
    if texel >= dims.pitch || row >= dims.rows {
        return;
    }
    textureStore(dst, vec2<u32>(texel, row + dims.row0), src4[row * dims.pitch + texel]);
}

// Transposed: mirror row r is source column r. Sides must be multiples of 4: each
// invocation moves a 4×4 block with four vector loads.
@compute @workgroup_size(64)
fn transpose4(@builtin(global_invocation_id) gid: vec3<u32>) {
    let cb = gid.x;
    let rb = gid.y;
    let cols4 = dims.cols / 4u;
    if cb >= cols4 || rb * 4u >= dims.rows {
        return;
    }
    let r0 = rb * 4u;
    let m = transpose(mat4x4<f32>(
        src4[r0 * cols4 + cb],
        src4[(r0 + 1u) * cols4 + cb],
        src4[(r0 + 2u) * cols4 + cb],
        src4[(r0 + 3u) * cols4 + cb],
    ));
    for (var i = 0u; i < 4u; i++) {
        textureStore(dst, vec2<u32>(rb + dims.row0 / 4u, cb * 4u + i), m[i]);
    }
}
