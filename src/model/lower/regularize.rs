//! Keras-style regularization in the training plan: the penalty's gradient joins the
//! data gradient before clipping and the optimizer (the penalty is part of the loss), and
//! the max-norm constraint runs after every update, as Keras applies `kernel_constraint`
//! after `optimizer.apply`.

use super::*;
use crate::model::regularize::group_of;

impl Builder<'_> {
    /// The gradient of this layer's weights (and biases, when asked) regularized by a
    /// group, looked up among the trainable parameters (frozen layers have none).
    fn grad_of(&self, param: TensorId) -> Option<TensorId> {
        self.params
            .iter()
            .find(|&&(p, _)| p == param)
            .map(|&(_, g)| g)
    }

    /// Adds each group's `l1·sign(w) + 2·l2·w` to the gradients of its layers.
    pub(super) fn penalty_grads(&mut self, net: &[Layer]) {
        for layer in net {
            let Some(r) = group_of(&self.spec.regularization, layer.index) else {
                continue;
            };
            if !r.has_penalty() {
                continue;
            }
            let tensors = if r.bias {
                vec![layer.weight, layer.bias]
            } else {
                vec![layer.weight]
            };
            for w in tensors {
                if let Some(grad) = self.grad_of(w) {
                    self.p.train.push(Op::PenaltyGrad(PenaltyGrad {
                        w,
                        grad,
                        len: self.p.tensors[w].len(),
                        l1: r.l1,
                        l2: r.l2,
                    }));
                }
            }
        }
    }

    /// Rescales the incoming weights of each unit of a max-norm group after its update.
    pub(super) fn max_norms(&mut self, net: &[Layer]) {
        for layer in net {
            let Some(c) = group_of(&self.spec.regularization, layer.index).and_then(|r| r.max_norm)
            else {
                continue;
            };
            if self.grad_of(layer.weight).is_some() {
                self.p.train.push(Op::MaxNorm(MaxNorm {
                    w: layer.weight,
                    rows: layer.fan_out,
                    cols: layer.fan_in,
                    max_value: c,
                }));
            }
        }
    }
}
