//! The tiled matmul's block configurations (`MatmulTile`) and their autotuning: every
//! configuration pinned against the CPU reference, at sides that are not multiples of any
//! block, in every transpose form, with and without accumulation; tuning forced on (the
//! test adapter is usually CPU-backed, where it is off by default) picks a candidate and
//! writes the cache, which a second engine reads without timing; a corrupt cache is
//! ignored and rewritten; a configuration over the device's limits is refused by name.
//!
//! Tolerance: `Tolerance::default()` (atol 1e-6, rtol 1e-4), as for the other matmul
//! kernels. Operands are in [-1, 1) and k ≤ 257, so f32 sums in any order (the tiled
//! kernel adds in `bk`-sized slices, with fused multiply-adds) stay within about 1e-5
//! relative of the f64 reference, while a wrong index or a dropped slice of k is off by
//! order one.

mod common;

use common::matmul::{check_product, matmul_plan};
use common::{gpu, TempDir};
use std::time::Duration;
use steadygrad::engine::Engine;
use steadygrad::gpu::{
    GpuEngine, MatmulTile, MatmulVariant, ShapeClass, TileSource, TuneMode, TuneOptions,
};
use steadygrad::graph::Plan;
use steadygrad::ops::{MatMul, Op};
use steadygrad::tensor::Storage;

/// Odd sides (1, 7, 33, 257 each appear as m, k and n) and rectangular shapes, one a
/// multiple of every block.
const SHAPES: [(usize, usize, usize); 10] = [
    (1, 1, 1),
    (7, 7, 7),
    (33, 33, 33),
    (257, 257, 257),
    (1, 257, 33),
    (257, 1, 7),
    (33, 7, 257),
    (7, 33, 1),
    (130, 67, 200),
    (256, 128, 384),
];

const FORMS: [(bool, bool); 4] = [(false, true), (false, false), (true, false), (true, true)];

fn options(pin: Option<MatmulTile>, mode: TuneMode, cache: Option<&TempDir>) -> TuneOptions {
    TuneOptions {
        pin,
        mode,
        cache: cache.map(|d| d.path().join("matmul-tune.json")),
        budget: Duration::from_secs(1),
    }
}

#[test]
fn every_tile_matches_the_cpu_reference() {
    let ctx = gpu();
    let mut failures = Vec::new();
    let mut checked = 0;
    for tile in MatmulTile::fitting(&ctx.limits) {
        let mut engine = GpuEngine::new(ctx.clone());
        engine.set_matmul_variant(MatmulVariant::Tiled);
        engine.set_tune_options(options(Some(tile), TuneMode::Off, None));
        engine.init_persistent(&[]).unwrap();
        for (s, &shape) in SHAPES.iter().enumerate() {
            for (f, &form) in FORMS.iter().enumerate() {
                // Accumulation only changes the store: every other case covers it.
                let accumulate = (s + f) % 2 == 1;
                if let Some(e) = check_product(&mut engine, shape, form, accumulate, s as u64) {
                    failures.push(format!("{tile}: {e}"));
                }
                checked += 1;
            }
        }
        let (choices, timed) = engine.matmul_tiles();
        assert_eq!(timed, 0, "{tile}: a pinned tile must not be timed");
        assert!(
            choices
                .iter()
                .all(|c| c.tile == tile && c.source == TileSource::Pinned),
            "{tile}: {choices:?}"
        );
    }
    // Every configuration that fits WebGPU's defaults must have run, not a filtered list.
    assert!(
        checked >= 6 * SHAPES.len() * FORMS.len(),
        "only {checked} cases"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn autotune_picks_a_candidate_caches_it_and_reads_it_back() {
    let ctx = gpu();
    let dir = TempDir::new("tune");
    let shape = (96, 80, 112);
    let tuned_engine = || {
        let mut e = GpuEngine::new(ctx.clone());
        e.set_matmul_variant(MatmulVariant::Tiled);
        // Enough time to build and time every candidate on a loaded software adapter (the
        // 1 s default includes building their pipelines, which lavapipe does slowly):
        // only a complete tuning is cached.
        e.set_tune_options(TuneOptions {
            budget: Duration::from_secs(120),
            ..options(None, TuneMode::On, Some(&dir))
        });
        e.init_persistent(&[]).unwrap();
        e
    };
    let mut first = tuned_engine();
    assert_eq!(
        check_product(&mut first, shape, (false, true), false, 1),
        None
    );
    let (choices, timed) = first.matmul_tiles();
    assert_eq!(timed, 1, "{choices:?}");
    let choice = &choices[0];
    assert!(
        matches!(choice.source, TileSource::Tuned { complete: true, .. }),
        "{choice:?}"
    );
    // Where the device has timestamp queries (lavapipe does), they must have timed it.
    let timestamps = ctx
        .device
        .features()
        .contains(wgpu::Features::TIMESTAMP_QUERY);
    assert!(
        !timestamps
            || matches!(
                choice.source,
                TileSource::Tuned {
                    gpu_clock: true,
                    ..
                }
            ),
        "{choice:?}"
    );
    assert!(choice.timings.iter().all(|t| t.1 > 0.0 && t.1 < 1.0));
    assert!(MatmulTile::fitting(&ctx.limits).any(|t| t == choice.tile));
    assert!(!choice.timings.is_empty());
    let cache = dir.path().join("matmul-tune.json");
    let text = std::fs::read_to_string(&cache).expect("the cache was written");
    assert!(text.contains(choice.tile.name), "{text}");
    assert!(text.contains(&choice.class.to_string()), "{text}");

    // A new engine (as a new process would) reads the choice instead of timing.
    let mut second = tuned_engine();
    assert_eq!(
        check_product(&mut second, shape, (false, true), false, 2),
        None
    );
    let (again, timed) = second.matmul_tiles();
    assert_eq!(timed, 0, "{again:?}");
    assert_eq!(again[0].tile, choice.tile);
    assert_eq!(again[0].source, TileSource::Cache);

    // A corrupt cache is ignored: the class is timed again, and the file rewritten.
    std::fs::write(&cache, b"{\"adapters\": [not json").unwrap();
    let mut third = tuned_engine();
    assert_eq!(
        check_product(&mut third, shape, (false, true), false, 3),
        None
    );
    let (after, timed) = third.matmul_tiles();
    assert_eq!(timed, 1, "{after:?}");
    let text = std::fs::read_to_string(&cache).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&text).expect("rewritten as JSON");
    assert!(parsed["adapters"].is_object(), "{text}");
}

#[test]
fn tuning_stays_within_its_budget_and_is_off_on_request() {
    let ctx = gpu();
    let mut engine = GpuEngine::new(ctx.clone());
    engine.set_matmul_variant(MatmulVariant::Tiled);
    engine.set_tune_options(options(None, TuneMode::Off, None));
    engine.init_persistent(&[]).unwrap();
    assert_eq!(
        check_product(&mut engine, (33, 7, 257), (true, false), false, 4),
        None
    );
    let (choices, timed) = engine.matmul_tiles();
    assert_eq!(timed, 0);
    assert_eq!(choices[0].source, TileSource::Default);
    assert_eq!(choices[0].tile, MatmulTile::DEFAULT);

    // Several classes in one plan share the one budget.
    let mut engine = GpuEngine::new(ctx.clone());
    engine.set_matmul_variant(MatmulVariant::Tiled);
    let budget = Duration::from_millis(300);
    engine.set_tune_options(TuneOptions {
        budget,
        ..options(None, TuneMode::On, None)
    });
    engine.init_persistent(&[]).unwrap();
    let mut plan = Plan::default();
    for (i, &(m, k, n)) in [(64, 64, 64), (257, 33, 130), (512, 256, 384)]
        .iter()
        .enumerate()
    {
        let a = plan.add_tensor(format!("a{i}"), &[m * k], Storage::Local);
        let b = plan.add_tensor(format!("b{i}"), &[k * n], Storage::Local);
        let c = plan.add_tensor(format!("c{i}"), &[m * n], Storage::Local);
        plan.forward.push(Op::MatMul(MatMul {
            a,
            b,
            c,
            m,
            k,
            n,
            trans_a: false,
            trans_b: false,
            accumulate: false,
        }));
    }
    let t0 = std::time::Instant::now();
    engine.compile(&plan).unwrap();
    let took = t0.elapsed();
    let (choices, timed) = engine.matmul_tiles();
    assert_eq!(choices.len(), 3, "{choices:?}");
    assert_eq!(timed, 3, "each class gets at least one timing: {choices:?}");
    // The budget bounds the timing; building each candidate's pipeline the first time
    // and one run of the slowest are allowed on top (a software adapter compiles slowly).
    assert!(took < budget * 20, "compiling took {took:?}");
}

#[test]
fn a_tile_over_the_limits_is_refused_by_name() {
    let webgpu = wgpu::Limits::default();
    let big = MatmulTile::by_name("128x128-8x8-k32").unwrap();
    let err = big.check(&webgpu).unwrap_err().to_string();
    assert!(
        err.contains("128x128-8x8-k32") && err.contains("32768"),
        "{err}"
    );
    assert!(err.contains("16384"), "{err}");
    // Every other configuration fits WebGPU's defaults.
    assert_eq!(
        MatmulTile::fitting(&webgpu).count(),
        MatmulTile::ALL.len() - 1
    );

    // The engine refuses a pinned tile its device cannot run when compiling, naming it;
    // on a device that can run it, it is used.
    let ctx = gpu();
    let mut engine = GpuEngine::new(ctx.clone());
    engine.set_tune_options(options(Some(big), TuneMode::Auto, None));
    engine.init_persistent(&[]).unwrap();
    let fits = big.check(&ctx.limits).is_ok();
    let (plan, _) = matmul_plan(33, 7, 65, (false, true), false);
    match engine.compile(&plan) {
        Ok(_) => assert!(fits, "compiled with a tile over the limits"),
        Err(e) => {
            let e = format!("{e:#}");
            assert!(!fits, "refused a tile that fits: {e}");
            assert!(e.contains("128x128-8x8-k32"), "{e}");
        }
    }
    assert!(MatmulTile::by_name("96x96").is_err());
    assert!("9x9".parse::<TuneMode>().is_err());
}

#[test]
fn shape_classes_bucket_each_side_to_a_power_of_two() {
    let class = |m, k, n, ta, tb| ShapeClass::of(m, k, n, ta, tb).to_string();
    assert_eq!(class(1, 4097, 257, false, true), "nt 16×8192×512");
    assert_eq!(class(256, 256, 256, false, false), "nn 256×256×256");
    assert_eq!(class(257, 1 << 20, 3, true, false), "tn 512×8192×16");
    assert_eq!(
        ShapeClass::of(100, 200, 300, true, false),
        ShapeClass::of(128, 256, 512, true, false)
    );
    assert_ne!(
        class(64, 64, 64, false, true),
        class(64, 64, 64, true, false)
    );
}
