//! The optimizers, written over tch tensors instead of tch's `COptimizer`: the same math as
//! PyTorch's `torch.optim` SGD, Adam and RMSprop (single-tensor, not fused), but with state this
//! worker can read and restore — momentum buffers, Adam's moments and step counts — so a resumed
//! job continues exactly where it stopped (`resume.rs`).

use anyhow::Context;
use std::collections::HashMap;
use tch::{Kind, Tensor};
use trainq::domain::spec::{OptimizerName, OptimizerSpec};

/// Keras' epsilon for Adam and RMSprop (PyTorch's defaults differ: 1e-8).
const EPSILON: f64 = 1e-7;

/// Which update rule, with its constants.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Rule {
    /// `buf = m·buf + g; p −= lr·buf` (no dampening, no Nesterov); plain `p −= lr·g` without momentum.
    Sgd { momentum: f64 },
    /// Adam with torch's bias correction: `p −= lr/bc1 · m / (√v/√bc2 + ε)`.
    Adam { beta1: f64, beta2: f64, eps: f64 },
    /// RMSprop, not centred: `s = α·s + (1−α)·g²`, then `p −= lr·g/(√s+ε)`, through a momentum
    /// buffer when there is momentum.
    Rmsprop { alpha: f64, eps: f64, momentum: f64 },
}

impl Rule {
    /// The names of the per-parameter state buffers, in the order [`Optimizer::state`] holds them.
    fn buffers(self) -> &'static [&'static str] {
        match self {
            Rule::Sgd { momentum } if momentum != 0.0 => &["momentum_buffer"],
            Rule::Sgd { .. } => &[],
            Rule::Adam { .. } => &["exp_avg", "exp_avg_sq"],
            Rule::Rmsprop { momentum, .. } if momentum != 0.0 => &["square_avg", "momentum_buffer"],
            Rule::Rmsprop { .. } => &["square_avg"],
        }
    }
}

/// One phase's optimizer over exactly that phase's trainable tensors.
pub struct Optimizer {
    rule: Rule,
    lr: f64,
    /// L2 penalty added to the gradient (`g + wd·p`), as torch.optim's `weight_decay`.
    weight_decay: f64,
    parameters: Vec<Tensor>,
    /// Per parameter: its buffers, named by [`Rule::buffers`]; zeros until the first step (a zero
    /// momentum buffer gives the same first step as torch's copy of the first gradient).
    state: Vec<Vec<Tensor>>,
    /// Per parameter: updates applied (torch keeps one count per parameter: a parameter without a
    /// gradient is skipped and its count stays).
    steps: Vec<i64>,
}

extern "C" {
    fn trainq_clear_grad(tensor: *mut torch_sys::C_tensor) -> std::os::raw::c_int;
}

/// Below this many elements a parameter is updated on one thread.
const PARALLEL_ELEMENTS: usize = 1 << 16;

/// RMSprop without momentum on contiguous float32 CPU tensors, in one pass over memory: the
/// tensor ops of [`Optimizer::step`] make about a dozen passes and four temporaries, which on a
/// CPU cost a fifth of a VGG16 block5 step. The arithmetic is theirs, element by element, in
/// float32: `g = g + p·wd`, `s = s·α + (g·(1−α))·g`, `p = p − (g / (√s + ε))·lr`. Returns false
/// (nothing done) for tensors it does not take: other devices, kinds or layouts.
fn rmsprop_in_one_pass(
    parameter: &Tensor,
    gradient: &Tensor,
    square_avg: &Tensor,
    [lr, alpha, eps, weight_decay]: [f64; 4],
) -> bool {
    let tensors = [parameter, gradient, square_avg];
    if !tensors.iter().all(|t| t.device() == tch::Device::Cpu && t.kind() == Kind::Float && t.is_contiguous()) {
        return false;
    }
    let n = parameter.numel();
    if gradient.numel() != n || square_avg.numel() != n {
        return false;
    }
    // SAFETY: three distinct contiguous float32 CPU tensors of `n` elements (checked above), not
    // otherwise touched while the slices live (under no_grad, inside `step`). A gradient never
    // shares storage with its parameter or with the optimizer's buffer.
    let (p, g, s) = unsafe {
        (
            std::slice::from_raw_parts_mut(parameter.data_ptr() as *mut f32, n),
            std::slice::from_raw_parts(gradient.data_ptr() as *const f32, n),
            std::slice::from_raw_parts_mut(square_avg.data_ptr() as *mut f32, n),
        )
    };
    let (lr, alpha, rest, eps, wd) = (lr as f32, alpha as f32, (1.0 - alpha) as f32, eps as f32, weight_decay as f32);
    let update = |p: &mut [f32], g: &[f32], s: &mut [f32]| {
        for ((p, &g), s) in p.iter_mut().zip(g).zip(s.iter_mut()) {
            let g = if wd != 0.0 { g + *p * wd } else { g };
            *s = *s * alpha + (g * rest) * g;
            *p -= (g / (s.sqrt() + eps)) * lr;
        }
    };
    let threads = (tch::get_num_threads().max(1) as usize).min(n.div_ceil(PARALLEL_ELEMENTS));
    if threads <= 1 {
        update(p, g, s);
    } else {
        let chunk = n.div_ceil(threads);
        std::thread::scope(|scope| {
            for ((p, g), s) in p.chunks_mut(chunk).zip(g.chunks(chunk)).zip(s.chunks_mut(chunk)) {
                scope.spawn(move || update(p, g, s));
            }
        });
    }
    true
}

/// The tensor that holds every parameter's step count in an exported state.
const STEPS: &str = "steps";

impl Optimizer {
    /// The spec's optimizer over `parameters`, with the constants trainq has always used (Keras'
    /// RMSprop: rho 0.9, epsilon 1e-7; Adam: betas 0.9 and 0.999, epsilon 1e-7).
    pub fn new(spec: &OptimizerSpec, parameters: &[Tensor]) -> Optimizer {
        let rule = match spec.name {
            OptimizerName::Sgd => Rule::Sgd { momentum: spec.momentum },
            OptimizerName::Adam => Rule::Adam { beta1: 0.9, beta2: 0.999, eps: EPSILON },
            OptimizerName::Rmsprop => Rule::Rmsprop { alpha: 0.9, eps: EPSILON, momentum: spec.momentum },
        };
        let state = parameters
            .iter()
            .map(|parameter| rule.buffers().iter().map(|_| tch::no_grad(|| parameter.zeros_like())).collect())
            .collect();
        Optimizer {
            rule,
            lr: spec.lr,
            weight_decay: spec.weight_decay,
            parameters: parameters.iter().map(Tensor::shallow_clone).collect(),
            state,
            steps: vec![0; parameters.len()],
        }
    }

    /// Drops every parameter's gradient (PyTorch's `set_to_none`): the next backward writes fresh
    /// ones rather than adding into zeros, a pass over every gradient saved.
    pub fn zero_grad(&mut self) {
        for parameter in &mut self.parameters {
            // SAFETY: a live handle; the shim only resets the tensor's gradient.
            let status = unsafe { trainq_clear_grad(parameter.as_mut_ptr()) };
            assert_eq!(status, 0, "libtorch could not drop a gradient");
        }
    }

    /// One update of every parameter that has a gradient, in place and outside autograd.
    pub fn step(&mut self) {
        let (lr, weight_decay, rule) = (self.lr, self.weight_decay, self.rule);
        tch::no_grad(|| {
            for ((parameter, state), steps) in self.parameters.iter().zip(&mut self.state).zip(&mut self.steps) {
                let gradient = parameter.grad();
                if !gradient.defined() {
                    continue;
                }
                *steps += 1;
                if let Rule::Rmsprop { alpha, eps, momentum: 0.0 } = rule {
                    if rmsprop_in_one_pass(parameter, &gradient, &state[0], [lr, alpha, eps, weight_decay]) {
                        continue;
                    }
                }
                let gradient = if weight_decay != 0.0 { gradient + parameter * weight_decay } else { gradient };
                let mut parameter = parameter.shallow_clone();
                match rule {
                    Rule::Sgd { momentum } => {
                        let update = if momentum != 0.0 {
                            let buffer = &mut state[0];
                            let _ = buffer.g_mul_scalar_(momentum);
                            let _ = buffer.g_add_(&gradient);
                            buffer.shallow_clone()
                        } else {
                            gradient
                        };
                        let _ = parameter.g_sub_(&(update * lr));
                    }
                    Rule::Adam { beta1, beta2, eps } => {
                        let bias_correction1 = 1.0 - beta1.powi(*steps as i32);
                        let bias_correction2 = 1.0 - beta2.powi(*steps as i32);
                        let (first, rest) = state.split_at_mut(1);
                        let (exp_avg, exp_avg_sq) = (&mut first[0], &mut rest[0]);
                        let _ = exp_avg.g_mul_scalar_(beta1);
                        let _ = exp_avg.g_add_(&(&gradient * (1.0 - beta1)));
                        let _ = exp_avg_sq.g_mul_scalar_(beta2);
                        let _ = exp_avg_sq.addcmul_(&(&gradient * (1.0 - beta2)), &gradient);
                        let mut denominator = exp_avg_sq.sqrt() / bias_correction2.sqrt();
                        let _ = denominator.g_add_scalar_(eps);
                        let _ = parameter.g_sub_(&((&*exp_avg / denominator) * (lr / bias_correction1)));
                    }
                    Rule::Rmsprop { alpha, eps, momentum } => {
                        let (first, rest) = state.split_at_mut(1);
                        let square_avg = &mut first[0];
                        let _ = square_avg.g_mul_scalar_(alpha);
                        let _ = square_avg.addcmul_(&(&gradient * (1.0 - alpha)), &gradient);
                        let mut average = square_avg.sqrt();
                        let _ = average.g_add_scalar_(eps);
                        if momentum != 0.0 {
                            let buffer = &mut rest[0];
                            let _ = buffer.g_mul_scalar_(momentum);
                            let _ = buffer.addcdiv_(&gradient, &average);
                            let _ = parameter.g_sub_(&(&*buffer * lr));
                        } else {
                            let _ = parameter.g_sub_(&((gradient / average) * lr));
                        }
                    }
                }
            }
        });
    }

    /// The state as named tensors on the parameters' device: `<index>.<buffer>` per parameter (in
    /// the order the optimizer was given them) and `steps` (int64, one per parameter).
    pub fn export(&self) -> Vec<(String, Tensor)> {
        let mut named = Vec::new();
        for (index, state) in self.state.iter().enumerate() {
            for (name, buffer) in self.rule.buffers().iter().zip(state) {
                named.push((format!("{index}.{name}"), buffer.shallow_clone()));
            }
        }
        named.push((String::from(STEPS), Tensor::from_slice(&self.steps)));
        named
    }

    /// Restores a state [`Optimizer::export`] wrote for the same parameters. Checks every name and
    /// shape before changing anything, so a mismatched state leaves the optimizer fresh.
    pub fn import(&mut self, named: &HashMap<String, Tensor>) -> anyhow::Result<()> {
        let steps = named.get(STEPS).context("the optimizer state has no step counts")?;
        anyhow::ensure!(
            steps.size() == [self.parameters.len() as i64],
            "the optimizer state counts steps of {:?} parameters, this phase trains {}",
            steps.size(),
            self.parameters.len()
        );
        let expected_buffers = self.parameters.len() * self.rule.buffers().len();
        anyhow::ensure!(
            named.len() == expected_buffers + 1,
            "the optimizer state holds {} buffers, this optimizer {expected_buffers}",
            named.len() - 1
        );
        let mut sources = Vec::new();
        for (index, (parameter, state)) in self.parameters.iter().zip(&self.state).enumerate() {
            for (name, buffer) in self.rule.buffers().iter().zip(state) {
                let key = format!("{index}.{name}");
                let source = named.get(&key).with_context(|| format!("the optimizer state lacks {key}"))?;
                anyhow::ensure!(
                    source.size() == parameter.size(),
                    "optimizer state {key} has shape {:?}, its parameter {:?}",
                    source.size(),
                    parameter.size()
                );
                sources.push((buffer.shallow_clone(), source));
            }
        }
        tch::no_grad(|| {
            for (mut buffer, source) in sources {
                buffer.copy_(&source.to_kind(buffer.kind()));
            }
        });
        self.steps = Vec::<i64>::try_from(&steps.to_kind(Kind::Int64))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{COptimizer, Device};

    /// tch's binding of libtorch's own optimizers, configured as trainq configured them before it
    /// had its own.
    fn libtorch_optimizer(spec: &OptimizerSpec, parameters: &[Tensor]) -> COptimizer {
        let mut optimizer = match spec.name {
            OptimizerName::Rmsprop => COptimizer::rms_prop(spec.lr, 0.9, 1e-7, spec.weight_decay, spec.momentum, false),
            OptimizerName::Adam => COptimizer::adam(spec.lr, 0.9, 0.999, spec.weight_decay, 1e-7, false),
            OptimizerName::Sgd => COptimizer::sgd(spec.lr, spec.momentum, 0.0, spec.weight_decay, false),
        }
        .unwrap();
        for parameter in parameters {
            optimizer.add_parameters(parameter, 0).unwrap();
        }
        optimizer
    }

    /// Parameters of a few shapes, the same for the same seed (without libtorch's global
    /// generator, which tests running in parallel share): small ones, and one large enough for the
    /// one-pass RMSprop to split across threads.
    fn parameters(seed: i64) -> Vec<Tensor> {
        [vec![300, 700], vec![5, 3], vec![3], vec![2, 3, 3, 3]]
            .iter()
            .map(|shape| {
                let count: i64 = shape.iter().product();
                let values: Vec<f32> = (0..count).map(|i| ((i as f32 * 0.37 + seed as f32) * 1.7).sin()).collect();
                Tensor::from_slice(&values).view(shape.as_slice()).set_requires_grad(true)
            })
            .collect()
    }

    /// A loss whose gradients change with the parameters and the step (so momentum and moments
    /// matter) and stay bounded (so no optimizer diverges).
    fn loss(parameters: &[Tensor], step: i64) -> Tensor {
        parameters
            .iter()
            .enumerate()
            .map(|(index, p)| {
                ((p * (index as f64 + 1.0) - step as f64 * 0.1).tanh().pow_tensor_scalar(2) * p.cos()).sum(Kind::Float)
            })
            .fold(Tensor::zeros([], (Kind::Float, Device::Cpu)), |total, term| total + term)
    }

    fn specs() -> Vec<OptimizerSpec> {
        let spec = |name, lr, momentum, weight_decay| OptimizerSpec { name, lr, momentum, weight_decay };
        vec![
            spec(OptimizerName::Sgd, 0.01, 0.9, 1e-3),
            spec(OptimizerName::Sgd, 0.05, 0.0, 0.0),
            spec(OptimizerName::Adam, 1e-2, 0.0, 1e-3),
            spec(OptimizerName::Adam, 1e-3, 0.0, 0.0),
            spec(OptimizerName::Rmsprop, 1e-3, 0.9, 1e-3),
            spec(OptimizerName::Rmsprop, 1e-3, 0.0, 0.0),
        ]
    }

    #[test]
    fn every_optimizer_takes_the_same_steps_as_libtorchs_own() {
        for spec in specs() {
            let (ours, theirs) = (parameters(7), parameters(7));
            let mut optimizer = Optimizer::new(&spec, &ours);
            let reference = libtorch_optimizer(&spec, &theirs);
            for step in 0..25 {
                optimizer.zero_grad();
                loss(&ours, step).backward();
                optimizer.step();
                reference.zero_grad().unwrap();
                loss(&theirs, step).backward();
                reference.step().unwrap();
            }
            for ((a, b), initial) in ours.iter().zip(&theirs).zip(parameters(7)) {
                let difference = (a - b).abs().max().double_value(&[]);
                assert!(difference < 1e-5, "{spec:?}: parameters differ by {difference}");
                let moved = (a - initial).abs().max().double_value(&[]);
                assert!(moved > 1e-3 && moved.is_finite(), "{spec:?}: moved by {moved}");
            }
        }
    }

    #[test]
    fn a_restored_state_continues_exactly_like_the_original() {
        for spec in specs() {
            let straight = parameters(3);
            let mut optimizer = Optimizer::new(&spec, &straight);
            let resumed = parameters(3);
            let mut first = Optimizer::new(&spec, &resumed);
            for step in 0..10 {
                for (optimizer, parameters) in [(&mut optimizer, &straight), (&mut first, &resumed)] {
                    optimizer.zero_grad();
                    loss(parameters, step).backward();
                    optimizer.step();
                }
            }
            // A new optimizer (as after a restart) over the same parameters, given the saved state.
            let exported: HashMap<String, Tensor> =
                first.export().into_iter().map(|(name, tensor)| (name, tensor.copy())).collect();
            let mut second = Optimizer::new(&spec, &resumed);
            second.import(&exported).unwrap();
            for step in 10..20 {
                for (optimizer, parameters) in [(&mut optimizer, &straight), (&mut second, &resumed)] {
                    optimizer.zero_grad();
                    loss(parameters, step).backward();
                    optimizer.step();
                }
            }
            for (a, b) in straight.iter().zip(&resumed) {
                assert!(a.equal(b), "{spec:?}: the resumed optimizer diverged");
            }
        }
    }

    #[test]
    fn a_state_of_other_parameters_is_refused_and_changes_nothing() {
        let spec = OptimizerSpec { name: OptimizerName::Adam, lr: 1e-3, momentum: 0.0, weight_decay: 0.0 };
        let mut optimizer = Optimizer::new(&spec, &parameters(1));
        optimizer.zero_grad();
        loss(&optimizer.parameters.iter().map(Tensor::shallow_clone).collect::<Vec<_>>(), 0).backward();
        optimizer.step();
        let exported: HashMap<String, Tensor> = optimizer.export().into_iter().collect();
        let mut other = Optimizer::new(&spec, &parameters(1)[..2]);
        assert!(other.import(&exported).is_err());
        let sgd = OptimizerSpec { name: OptimizerName::Sgd, momentum: 0.9, ..spec };
        assert!(Optimizer::new(&sgd, &parameters(1)).import(&exported).is_err());
        assert_eq!(other.steps, [0, 0]);
    }
}
