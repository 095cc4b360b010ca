//! Finite-difference gradient checks, one scheme for every op family's tests.
//!
//! The CPU reference stores `f32` and objectives are summed in `f64`. A central difference
//! with step `h` has O(h²) truncation error and picks up about 1e-7/h of `f32` rounding
//! from the objective; `h = 1e-2` balances the two on smooth functions (≈ 1e-4 relative
//! truncation, ≈ 1e-5 rounding). Ops with large third derivatives pass a smaller `h`
//! (batch norm over a handful of rows uses 2e-3). Bound: `|fd − analytic| ≤ 2e-3 +
//! 2e-2·|analytic|`, a margin over both errors that still catches a wrong factor or sign.

/// The default step.
pub const H: f32 = 1e-2;

/// Whether a finite difference and an analytic gradient agree within the bound above.
pub fn close(fd: f32, analytic: f32) -> bool {
    (fd - analytic).abs() <= 2e-3 + 2e-2 * analytic.abs()
}

/// Every element of `analytic` against `fd(i)`; the failure names the tensor and index.
pub fn assert_grad(name: &str, analytic: &[f32], fd: impl Fn(usize) -> f32) {
    for (i, &a) in analytic.iter().enumerate() {
        let f = fd(i);
        assert!(
            close(f, a),
            "{name}[{i}]: finite difference {f} vs analytic {a}"
        );
    }
}

/// Central difference of `objective` with respect to element `i` of `x`, step `h`.
pub fn central_h(x: &[f32], i: usize, h: f32, objective: impl Fn(&[f32]) -> f64) -> f32 {
    let mut p = x.to_vec();
    p[i] = x[i] + h;
    let up = objective(&p);
    p[i] = x[i] - h;
    let down = objective(&p);
    ((up - down) / (2.0 * h as f64)) as f32
}

/// [`central_h`] with the default step [`H`].
pub fn central(x: &[f32], i: usize, objective: impl Fn(&[f32]) -> f64) -> f32 {
    central_h(x, i, H, objective)
}

/// `Σ aᵢ·bᵢ` in f64: the usual scalar objective `⟨y, r⟩` for a random cotangent `r`.
pub fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}
