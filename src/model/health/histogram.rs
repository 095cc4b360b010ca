//! Histograms of each layer's weights, gradients and activations at statistics steps, for
//! TensorBoard's histogram dashboard. Computed on the host from tensors read back with the
//! statistics record, only when [`crate::Model::gather_histograms`] asks for them: the
//! statistics record itself is a few values per layer, these are whole tensors.

/// Equal-width buckets between a tensor's smallest and largest finite value: enough for
/// TensorBoard's drawing (it re-bins to 30 for display), few enough to keep events small.
pub const BUCKETS: usize = 30;

/// The distribution of one tensor's finite values, in the fields of TensorBoard's
/// `HistogramProto`. NaN and ±inf elements are left out of every field (one would make
/// the sum and the bucket edges meaningless) and counted in `nonfinite` instead.
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    /// Smallest and largest finite value; both 0 when there is none.
    pub min: f64,
    pub max: f64,
    /// Finite elements.
    pub num: u64,
    pub sum: f64,
    pub sum_squares: f64,
    /// Right edge of each bucket, the last one `max`; the first bucket starts at `min`.
    pub bucket_limit: Vec<f64>,
    /// Elements in each bucket.
    pub bucket: Vec<f64>,
    pub nonfinite: u64,
}

impl Histogram {
    /// Bins `values` into `buckets` equal-width buckets (at least one). A tensor whose
    /// finite values are all equal, or that has none, gets a single bucket: TensorBoard
    /// cannot draw an empty bucket list.
    pub fn of(values: &[f32], buckets: usize) -> Histogram {
        let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
        let (mut num, mut sum, mut sum_squares) = (0u64, 0.0f64, 0.0f64);
        for &v in values.iter().filter(|v| v.is_finite()) {
            lo = lo.min(v);
            hi = hi.max(v);
            num += 1;
            let v = f64::from(v);
            sum += v;
            sum_squares += v * v;
        }
        let (mut min, mut max) = (f64::from(lo), f64::from(hi));
        let nonfinite = values.len() as u64 - num;
        if num == 0 {
            (min, max) = (0.0, 0.0);
        }
        let n = if max > min { buckets.max(1) } else { 1 };
        let width = (max - min) / n as f64;
        let mut bucket_limit: Vec<f64> = (1..n).map(|i| min + width * i as f64).collect();
        bucket_limit.push(max);
        let mut bucket = vec![0.0; n];
        if n == 1 {
            bucket[0] = num as f64;
        } else {
            let mut counts = vec![0u64; n];
            let scale = n as f64 / (max - min);
            for &v in values.iter().filter(|v| v.is_finite()) {
                let i = ((f64::from(v) - min) * scale) as usize;
                counts[i.min(n - 1)] += 1;
            }
            bucket = counts.iter().map(|&c| c as f64).collect();
        }
        Histogram {
            min,
            max,
            num,
            sum,
            sum_squares,
            bucket_limit,
            bucket,
            nonfinite,
        }
    }
}

/// [`Histogram::of`] each tensor, on as many threads as the host has cores: a statistics
/// step of a deep model bins millions of values, which on one thread would cost more than
/// the training step itself on a fast GPU.
pub fn of_each(tensors: &[Vec<f32>], buckets: usize) -> Vec<Histogram> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut out: Vec<(usize, Histogram)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads.min(tensors.len()))
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(t) = tensors.get(i) else {
                            return done;
                        };
                        done.push((i, Histogram::of(t, buckets)));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("binning does not panic"))
            .collect()
    });
    out.sort_by_key(|&(i, _)| i);
    out.into_iter().map(|(_, h)| h).collect()
}

/// Which tensor of a layer a histogram describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HistogramKind {
    /// `layers.N.linear.weight`, after the step's update.
    Weights,
    /// Its gradient as the update used it (after clipping, when the model clips).
    Gradients,
    /// The layer's output in the training forward pass, over the batch.
    Activations,
}

impl HistogramKind {
    pub fn name(self) -> &'static str {
        match self {
            HistogramKind::Weights => "weights",
            HistogramKind::Gradients => "gradients",
            HistogramKind::Activations => "activations",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct LayerHistogram {
    pub layer: usize,
    pub kind: HistogramKind,
    pub histogram: Histogram,
}

/// The histograms of one statistics step: for each layer of the step's plan, the weights,
/// the gradients of trainable layers and the activations of layers the plan computes.
#[derive(Clone, Debug, PartialEq)]
pub struct StepHistograms {
    pub step: u64,
    pub layers: Vec<LayerHistogram>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_the_finite_values() {
        let h = Histogram::of(&[0.0, 1.0, 2.0, 3.0, f32::NAN, 4.0, f32::INFINITY], 4);
        assert_eq!((h.min, h.max, h.num, h.nonfinite), (0.0, 4.0, 5, 2));
        assert_eq!((h.sum, h.sum_squares), (10.0, 30.0));
        assert_eq!(h.bucket_limit, [1.0, 2.0, 3.0, 4.0]);
        // The maximum falls into the last bucket rather than past it.
        assert_eq!(h.bucket, [1.0, 1.0, 1.0, 2.0]);
    }

    #[test]
    fn of_each_keeps_the_order() {
        let tensors: Vec<Vec<f32>> = (0..37).map(|i| vec![i as f32; i % 5 + 1]).collect();
        let each = of_each(&tensors, 3);
        let one: Vec<Histogram> = tensors.iter().map(|t| Histogram::of(t, 3)).collect();
        assert_eq!(each, one);
        assert!(of_each(&[], 3).is_empty());
    }

    #[test]
    fn constant_and_empty_tensors_get_one_bucket() {
        let h = Histogram::of(&[0.5; 6], BUCKETS);
        assert_eq!(
            (h.bucket_limit.clone(), h.bucket.clone()),
            (vec![0.5], vec![6.0])
        );
        let h = Histogram::of(&[f32::NAN, f32::NEG_INFINITY], BUCKETS);
        assert_eq!((h.min, h.max, h.num, h.nonfinite), (0.0, 0.0, 0, 2));
        assert_eq!((h.bucket_limit, h.bucket), (vec![0.0], vec![0.0]));
    }
}
