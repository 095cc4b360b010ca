// Copies a row-major matrix [rows, cols] from a buffer into a texture mirror for the
// CPU-adapter matmul (see src/gpu/matmul_tex.rs for the layout), padding each row to a
// whole number of texels. Rows that already are whole texels are copied instead.

struct Dims {
    rows: u32,
    cols: u32,
    // Texels per row of the mirror, and log2 of the mirror texture's width.
    pitch: u32,
    shift: u32,
}

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var dst: texture_storage_2d<rgba32float, write>;

// One invocation per texel of the mirror: x is the texel within a row, y the row.
@compute @workgroup_size(64)
fn pack(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row = gid.y;
    let texel = gid.x;
    if texel >= dims.pitch || row >= dims.rows {
        return;
    }
    var v = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        let col = texel * 4u + j;
        if col < dims.cols {
            v[j] = src[row * dims.cols + col];
        }
    }
    let t = row * dims.pitch + texel;
    textureStore(dst, vec2<u32>(t & ((1u << dims.shift) - 1u), t >> dims.shift), v);
}
