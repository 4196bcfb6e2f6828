//! The optimizers, written over tch tensors instead of tch's `COptimizer`: the same math as
//! PyTorch's `torch.optim` SGD, Adam and RMSprop (single-tensor, not fused), but with state this
//! worker can read and restore — momentum buffers, Adam's moments and step counts — so a resumed
//! job continues exactly where it stopped (`resume.rs`).
//!
//! Under bf16 autocast an optimizer can also keep bf16 working copies of the weights
//! ([`Optimizer::keep_bf16_weights`]): the forward and backward passes then use them as they are,
//! where autocast would cast every float32 weight to bf16 on each forward pass and each bf16
//! gradient back to float32 on each backward pass (VGG16's block5: about 28 MB each way a step).
//! The float32 weights stay the masters the update writes, and the update writes the next working
//! copy in the same pass over memory: the same arithmetic and the same rounding, so the weights
//! come out bit for bit as under autocast's casts.

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
    /// Per parameter: its bf16 working copy, when it has one ([`Optimizer::keep_bf16_weights`]).
    working: Vec<Option<Working>>,
}

/// A weight's bf16 working copy and its float32 master (the same storage the network's variable
/// holds between steps).
struct Working {
    master: Tensor,
    copy: Tensor,
}

extern "C" {
    fn trainq_clear_grad(tensor: *mut torch_sys::C_tensor) -> std::os::raw::c_int;
}

/// Below this many elements a parameter is updated on one thread.
const PARALLEL_ELEMENTS: usize = 1 << 16;

/// A gradient's element as it lies in memory: a float32, or a bf16 (the high 16 bits of one).
trait GradientElement: Copy + Send + Sync {
    const KIND: Kind;
    /// The float32 this element is (exact: every bf16 is a float32).
    fn widen(self) -> f32;
}

impl GradientElement for f32 {
    const KIND: Kind = Kind::Float;
    fn widen(self) -> f32 {
        self
    }
}

impl GradientElement for u16 {
    const KIND: Kind = Kind::BFloat16;
    fn widen(self) -> f32 {
        f32::from_bits(u32::from(self) << 16)
    }
}

/// RMSprop without momentum on contiguous CPU tensors, in one pass over memory: the tensor ops of
/// [`Optimizer::step`] make about a dozen passes and four temporaries, which on a CPU cost a fifth
/// of a VGG16 block5 step. The arithmetic is theirs, element by element, in float32:
/// `g = g + p·wd`, `s = s·α + (g·(1−α))·g`, `p = p − (g / (√s + ε))·lr`.
///
/// `parameter` and `square_avg` are float32; `gradient` is float32 or bf16 (a bf16 weight's
/// gradient: widening it is exactly autocast's cast back to float32). With a bf16 `copy` the
/// updated weight is also written there, rounded as libtorch rounds to bf16 (to nearest, ties to
/// even), as autocast's cast of the weight would. Contiguous tensors only: a channels-last weight
/// takes the tensor ops, which round differently. Returns false (nothing done) for tensors it does
/// not take: other devices, kinds or layouts.
fn rmsprop_in_one_pass(
    parameter: &Tensor,
    gradient: &Tensor,
    square_avg: &Tensor,
    copy: Option<&Tensor>,
    constants: [f64; 4],
) -> bool {
    match gradient.kind() {
        Kind::Float => rmsprop_over::<f32>(parameter, gradient, square_avg, copy, constants),
        Kind::BFloat16 => rmsprop_over::<u16>(parameter, gradient, square_avg, copy, constants),
        _ => false,
    }
}

/// [`rmsprop_in_one_pass`] for gradients of element `G`.
fn rmsprop_over<G: GradientElement>(
    parameter: &Tensor,
    gradient: &Tensor,
    square_avg: &Tensor,
    copy: Option<&Tensor>,
    [lr, alpha, eps, weight_decay]: [f64; 4],
) -> bool {
    let n = parameter.numel();
    let kinds = [
        (Some(parameter), Kind::Float),
        (Some(gradient), G::KIND),
        (Some(square_avg), Kind::Float),
        (copy, Kind::BFloat16),
    ];
    let takes = |tensor: &Tensor, kind| {
        tensor.device() == tch::Device::Cpu && tensor.kind() == kind && tensor.numel() == n && tensor.is_contiguous()
    };
    if !kinds.iter().all(|&(tensor, kind)| tensor.is_none_or(|tensor| takes(tensor, kind))) {
        return false;
    }
    // SAFETY: distinct contiguous CPU tensors of `n` elements, of the kinds checked above. A
    // gradient never shares storage with its parameter, the optimizer's buffer or the working
    // copy; nothing else touches them while the slices live (under no_grad, inside `step`), and
    // each thread below takes a disjoint chunk of each.
    let (p, g, s, c) = unsafe {
        (
            std::slice::from_raw_parts_mut(parameter.data_ptr() as *mut f32, n),
            std::slice::from_raw_parts(gradient.data_ptr() as *const G, n),
            std::slice::from_raw_parts_mut(square_avg.data_ptr() as *mut f32, n),
            copy.map(|copy| std::slice::from_raw_parts_mut(copy.data_ptr() as *mut u16, n)),
        )
    };
    let constants = [lr as f32, alpha as f32, (1.0 - alpha) as f32, eps as f32, weight_decay as f32];
    let update = |p: &mut [f32], g: &[G], s: &mut [f32], c: Option<&mut [u16]>| match c {
        Some(c) => rmsprop_elements::<G, true>(p, g, s, c, constants),
        None => rmsprop_elements::<G, false>(p, g, s, &mut [], constants),
    };
    let threads = (tch::get_num_threads().max(1) as usize).min(n.div_ceil(PARALLEL_ELEMENTS));
    if threads <= 1 {
        update(p, g, s, c);
    } else {
        let chunk = n.div_ceil(threads);
        let mut copies = c.map(|c| c.chunks_mut(chunk));
        std::thread::scope(|scope| {
            for ((p, g), s) in p.chunks_mut(chunk).zip(g.chunks(chunk)).zip(s.chunks_mut(chunk)) {
                let c = copies.as_mut().and_then(Iterator::next);
                scope.spawn(move || update(p, g, s, c));
            }
        });
    }
    true
}

/// The elements of one thread's chunk, updated by [`rmsprop_in_one_pass`]'s arithmetic; with
/// `COPY`, each updated weight is also rounded into `c` in the same visit.
#[inline(always)]
fn rmsprop_elements<G: GradientElement, const COPY: bool>(
    p: &mut [f32],
    g: &[G],
    s: &mut [f32],
    c: &mut [u16],
    [lr, alpha, rest, eps, wd]: [f32; 5],
) {
    let n = p.len();
    // Equal lengths up front let the compiler drop the bounds checks below.
    assert!(g.len() == n && s.len() == n && (!COPY || c.len() == n));
    for i in 0..n {
        let g = g[i].widen();
        let g = if wd != 0.0 { g + p[i] * wd } else { g };
        s[i] = s[i] * alpha + (g * rest) * g;
        p[i] -= (g / (s[i].sqrt() + eps)) * lr;
        if COPY {
            c[i] = bf16_nearest_even(p[i]);
        }
    }
}

/// A float32 rounded to bf16 as libtorch rounds it (`c10::BFloat16`: to nearest, ties to even;
/// NaN stays NaN).
fn bf16_nearest_even(value: f32) -> u16 {
    if value.is_nan() {
        return 0x7FC0;
    }
    let bits = value.to_bits();
    ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) as u16
}

/// Drops a tensor's gradient.
fn clear_grad(tensor: &mut Tensor) {
    // SAFETY: a live handle; the shim only resets the tensor's gradient.
    let status = unsafe { trainq_clear_grad(tensor.as_mut_ptr()) };
    assert_eq!(status, 0, "libtorch could not drop a gradient");
}

/// One update of `parameter` (float32) from `gradient` (float32) by `rule`, with its state
/// buffers and its step count (this step included), in place.
fn update(
    rule: Rule,
    [lr, weight_decay]: [f64; 2],
    parameter: &Tensor,
    gradient: &Tensor,
    state: &mut [Tensor],
    steps: i64,
) {
    if let Rule::Rmsprop { alpha, eps, momentum: 0.0 } = rule {
        if rmsprop_in_one_pass(parameter, gradient, &state[0], None, [lr, alpha, eps, weight_decay]) {
            return;
        }
    }
    let gradient = if weight_decay != 0.0 { gradient + parameter * weight_decay } else { gradient.shallow_clone() };
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
            let bias_correction1 = 1.0 - beta1.powi(steps as i32);
            let bias_correction2 = 1.0 - beta2.powi(steps as i32);
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
            working: parameters.iter().map(|_| None).collect(),
        }
    }

    /// Keeps a bf16 working copy of every float32 weight of two or more dimensions (convolution
    /// and dense kernels: what bf16 autocast casts for every forward pass; biases and batch-norm
    /// tensors are small, and batch norm computes with float32 ones). Between steps the network
    /// holds the float32 masters, so checkpoints, evaluation and the optimizer's state are as
    /// without copies; [`Optimizer::lower`] gives it the copies for one step, which [`Optimizer::step`]
    /// ends. Only for steps under bf16 autocast: without it the copies would compute in bf16.
    pub fn keep_bf16_weights(&mut self) {
        tch::no_grad(|| {
            for (parameter, working) in self.parameters.iter().zip(&mut self.working) {
                if working.is_none() && parameter.dim() >= 2 && parameter.kind() == Kind::Float {
                    // The master shares the variable's storage; the copy keeps its layout.
                    let master = parameter.detach();
                    let copy = master.to_kind(Kind::BFloat16);
                    *working = Some(Working { master, copy });
                }
            }
        });
    }

    /// Whether this optimizer keeps bf16 working copies.
    pub fn has_bf16_weights(&self) -> bool {
        self.working.iter().any(Option::is_some)
    }

    /// Puts the bf16 working copies in the network for the next forward and backward pass; the
    /// next [`Optimizer::step`] puts the masters back.
    pub fn lower(&mut self) {
        for (parameter, working) in self.parameters.iter_mut().zip(&self.working) {
            if let Some(working) = working {
                clear_grad(parameter);
                parameter.set_data(&working.copy);
            }
        }
    }

    /// Drops every parameter's gradient (PyTorch's `set_to_none`): the next backward writes fresh
    /// ones rather than adding into zeros, a pass over every gradient saved.
    pub fn zero_grad(&mut self) {
        for parameter in &mut self.parameters {
            clear_grad(parameter);
        }
    }

    /// One update of every parameter that has a gradient, in place and outside autograd. A
    /// parameter with a bf16 working copy has its float32 master updated from the copy's gradient,
    /// the copy rewritten from the master, and the master put back in the network.
    pub fn step(&mut self) {
        let (lr, weight_decay, rule) = (self.lr, self.weight_decay, self.rule);
        tch::no_grad(|| {
            let each = self.parameters.iter_mut().zip(&mut self.state).zip(&mut self.steps).zip(&self.working);
            for (((parameter, state), steps), working) in each {
                let gradient = parameter.grad();
                if gradient.defined() {
                    *steps += 1;
                    match working {
                        None => update(rule, [lr, weight_decay], parameter, &gradient, state, *steps),
                        Some(Working { master, copy }) => {
                            let constants = |alpha, eps| [lr, alpha, eps, weight_decay];
                            let fused = matches!(rule, Rule::Rmsprop { alpha, eps, momentum: 0.0 }
                                if rmsprop_in_one_pass(master, &gradient, &state[0], Some(copy), constants(alpha, eps)));
                            if !fused {
                                let gradient = gradient.to_kind(Kind::Float);
                                update(rule, [lr, weight_decay], master, &gradient, state, *steps);
                                copy.shallow_clone().copy_(master);
                            }
                        }
                    }
                }
                if let Some(working) = working {
                    clear_grad(parameter);
                    parameter.set_data(&working.master);
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

    /// Parameters of a small network: a 3×3 convolution (4 → 8 channels, weight and bias) and a
    /// dense layer (128 → 640: enough elements for the one-pass updates to split across threads).
    fn network(seed: i64, channels_last: bool) -> Vec<Tensor> {
        let mut parameters: Vec<Tensor> = [vec![8, 4, 3, 3], vec![8], vec![640, 128], vec![640]]
            .iter()
            .map(|shape| {
                let count: i64 = shape.iter().product();
                let values: Vec<f32> =
                    (0..count).map(|i| ((i as f32 * 0.37 + seed as f32) * 1.7).sin() * 0.2).collect();
                Tensor::from_slice(&values).view(shape.as_slice()).set_requires_grad(true)
            })
            .collect();
        if channels_last {
            crate::precision::set_channels_last(&mut parameters);
        }
        parameters
    }

    /// The network's loss on a batch that changes with the step, under bf16 autocast as a bf16
    /// job's forward pass runs.
    fn autocast_loss(parameters: &[Tensor], step: i64) -> Tensor {
        use trainq::domain::spec::Precision;
        let numerics = crate::precision::Numerics::new(Precision::Bf16, Device::Cpu, crate::precision::CpuBf16::None);
        let values: Vec<f32> = (0..2 * 4 * 6 * 6).map(|i| ((i + 13 * step) as f32 * 0.61).cos()).collect();
        let images = Tensor::from_slice(&values).view([2, 4, 6, 6]);
        numerics.forward(|| {
            let x = images.conv2d(&parameters[0], Some(&parameters[1]), [1, 1], [0, 0], [1, 1], 1).relu();
            let y = x.flatten(1, -1).linear(&parameters[2], Some(&parameters[3]));
            (y - step as f64 * 0.05).tanh().square().mean(Kind::Float)
        })
    }

    #[test]
    fn bf16_working_copies_train_bit_for_bit_as_autocasts_casts_do() {
        for channels_last in [false, true] {
            for spec in specs() {
                let (plain, lowered) = (network(5, channels_last), network(5, channels_last));
                let mut casts = Optimizer::new(&spec, &plain);
                let mut copies = Optimizer::new(&spec, &lowered);
                copies.keep_bf16_weights();
                assert!(copies.has_bf16_weights() && !casts.has_bf16_weights());
                for step in 0..8 {
                    casts.zero_grad();
                    autocast_loss(&plain, step).backward();
                    casts.step();
                    copies.lower();
                    assert_eq!(lowered[0].kind(), Kind::BFloat16, "the copies train");
                    assert_eq!(lowered[1].kind(), Kind::Float, "a bias keeps float32");
                    copies.zero_grad();
                    autocast_loss(&lowered, step).backward();
                    copies.step();
                }
                let case = format!("{spec:?}, channels-last {channels_last}");
                for ((a, b), initial) in plain.iter().zip(&lowered).zip(network(5, channels_last)) {
                    assert_eq!(b.kind(), Kind::Float, "{case}: the masters are back after a step");
                    assert!(a.equal(b), "{case}: the weights differ by {}", (a - b).abs().max().double_value(&[]));
                    let moved = (a - initial).abs().max().double_value(&[]);
                    assert!(moved > 1e-6 && moved.is_finite(), "{case}: moved by {moved}");
                }
                assert!(
                    plain[0].grad().defined() && !lowered[0].grad().defined(),
                    "{case}: a master carries no bf16 gradient"
                );
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
