// Refreshes two texture mirrors in one dispatch (src/ops/matmul/pack_pair.rs): two
// matrices one matmul reads that both need a pack, or one matrix mirrored both as it is
// and transposed. Each job is a row-major source [rows, cols] and its mirror, plain
// (row r is texture row r) or transposed (row r is source column r), zero-padded to
// whole texels. One invocation per 4×4 block of the source, for each job.

struct Dims {
    rows0: u32,
    cols0: u32,
    transpose0: u32,
    rows1: u32,
    cols1: u32,
    transpose1: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read> src0: array<f32>;
@group(0) @binding(2) var<storage, read> src1: array<f32>;
@group(0) @binding(3) var dst0: texture_storage_2d<rgba32float, write>;
@group(0) @binding(4) var dst1: texture_storage_2d<rgba32float, write>;

// Texel `at` of job `job`'s mirror (a texture parameter cannot be stored to).
fn store(job: u32, at: vec2<u32>, texel: vec4<f32>) {
    if job == 0u {
        textureStore(dst0, at, texel);
    } else {
        textureStore(dst1, at, texel);
    }
}

// Rows 4·rb .. 4·rb + 3 of the block, columns 4·cb .. 4·cb + 3 in each vector.
fn store_block(job: u32, v: array<vec4<f32>, 4>, rb: u32, cb: u32, rows: u32, cols: u32,
               transpose: u32) {
    if transpose == 0u {
        for (var q = 0u; q < 4u; q++) {
            if rb * 4u + q < rows {
                store(job, vec2<u32>(cb, rb * 4u + q), v[q]);
            }
        }
    } else {
        for (var j = 0u; j < 4u; j++) {
            if cb * 4u + j < cols {
                store(job, vec2<u32>(rb, cb * 4u + j),
                      vec4<f32>(v[0][j], v[1][j], v[2][j], v[3][j]));
            }
        }
    }
}

// The two loads below differ only in their source: WGSL cannot pass a storage array to a
// function (not without the unrestricted_pointer_parameters language feature, which
// WebGPU does not guarantee), so each source gets its own loop.
@compute @workgroup_size(64)
fn pack_pair(@builtin(global_invocation_id) gid: vec3<u32>) {
    let cb = gid.x;
    let rb = gid.y;
    if cb * 4u < dims.cols0 && rb * 4u < dims.rows0 {
        var v: array<vec4<f32>, 4>;
        for (var q = 0u; q < 4u; q++) {
            for (var j = 0u; j < 4u; j++) {
                let r = rb * 4u + q;
                let c = cb * 4u + j;
                if r < dims.rows0 && c < dims.cols0 {
                    v[q][j] = src0[r * dims.cols0 + c];
                }
            }
        }
        store_block(0u, v, rb, cb, dims.rows0, dims.cols0, dims.transpose0);
    }
    if cb * 4u < dims.cols1 && rb * 4u < dims.rows1 {
        var v: array<vec4<f32>, 4>;
        for (var q = 0u; q < 4u; q++) {
            for (var j = 0u; j < 4u; j++) {
                let r = rb * 4u + q;
                let c = cb * 4u + j;
                if r < dims.rows1 && c < dims.cols1 {
                    v[q][j] = src1[r * dims.cols1 + c];
                }
            }
        }
        store_block(1u, v, rb, cb, dims.rows1, dims.cols1, dims.transpose1);
    }
}
