//! `trainq-worker bench-levers` (for `benches/q1_levers.rs`): Q1's two kinds of training step at
//! the step level, each candidate lever off and on in the same process, rounds alternating, so the
//! gain is not a neighbour's noise. Both steps start from the activations a Q1 job caches (bf16,
//! as a default job on a bf16 CPU keeps them) and run the worker's own network, feed and optimizer
//! code; only the lever differs.
//!
//! - Phase 1 (the head over pooled block5 activations, `[n, 512]`): about a hundred libtorch calls
//!   a step for a few hundred thousand multiply-adds, so dispatch, not arithmetic, is the cost.
//!   Lever (a): the head in float32, outside autocast: bf16 buys nothing on a 20×512 matmul, and
//!   autocast adds a cast of each input, weight and bias to every linear, forward and backward.
//! - Phase 2 (block5 and the head over block4's activations, `[n, 512, 8, 8]`). Lever (b): block5's
//!   weights held in bf16 for the forward and backward passes, with float32 masters that RMSprop
//!   updates from the bf16 gradients, writing the next step's bf16 weights in the same pass over
//!   memory. Autocast instead casts about 28 MB of float32 weights to bf16 every forward pass and
//!   the bf16 gradients back to float32 every backward pass. The arithmetic is the same (the same
//!   round-to-nearest-even casts, the same float32 update), so both sides must end with the same
//!   weights, bit for bit; the bench checks it.

use crate::evaluate::loss_and_correct;
use crate::model::{Cut, Network, Trainable};
use crate::optim::Optimizer;
use crate::precision::{CpuBf16, Numerics};
use std::time::Instant;
use tch::{Device, Kind, Tensor};
use trainq::domain::spec::{JobSpec, Precision};

extern "C" {
    fn trainq_clear_grad(tensor: *mut torch_sys::C_tensor) -> std::os::raw::c_int;
}

/// What `bench-levers` runs.
pub struct LeverBench {
    /// Images per step (Q1: 20).
    pub batch_size: i64,
    /// Timed steps per round.
    pub steps: u32,
    /// Rounds per side, alternating; each side's figure is the median round.
    pub rounds: u32,
    /// CPU threads.
    pub threads: usize,
}

/// The assignment's Q1 (as `domain::spec`'s tests spell it), at 128 px.
const Q1: &str = r#"{ "name": "q1", "dataset": "bench", "backbone": "vgg16", "weights": "random",
  "image_size": 128, "batch_size": 20,
  "head": ["gap", {"dense": 512}, "batchnorm", "relu", {"dense": 128}, {"dense": 1}],
  "phases": [ {"epochs": 100, "train": "head"}, {"epochs": 50, "train": ["block5", "head"]} ],
  "optimizer": {"name": "rmsprop", "lr": 1e-5}, "seed": 1 }"#;

/// Cached activations to train on: `count` random bf16 rows of `shape` and random binary labels.
struct Cached {
    inputs: Tensor,
    labels: Tensor,
}

impl Cached {
    fn new(count: i64, shape: &[i64]) -> Cached {
        let mut size = vec![count];
        size.extend_from_slice(shape);
        let inputs = Tensor::randn(size.as_slice(), (Kind::Float, Device::Cpu)).relu().to_kind(Kind::BFloat16);
        Cached { inputs, labels: Tensor::randint(2, [count], (Kind::Int64, Device::Cpu)) }
    }

    /// Step `step`'s batch, as `train_step` gathers it: the same rows on both sides of a lever.
    fn batch(&self, step: u32, batch_size: i64) -> (Tensor, Tensor) {
        let count = self.inputs.size()[0];
        let start = (step as i64 * batch_size) % (count - batch_size + 1);
        let index = Tensor::arange_start(start, start + batch_size, (Kind::Int64, Device::Cpu));
        (self.inputs.index_select(0, &index), self.labels.index_select(0, &index))
    }
}

/// One side of a lever: a network, its optimizer, and how it steps.
trait Side {
    /// One optimizer step on a batch; returns the loss.
    fn step(&mut self, inputs: &Tensor, labels: &Tensor) -> Tensor;
}

/// The worker's own step (`train::PhaseRun::train_step` from cached activations).
struct WorkerStep {
    network: Network,
    trainable: Trainable,
    optimizer: Optimizer,
    cut: Cut,
    numerics: Numerics,
    /// Lever (a): the head in float32 outside autocast.
    float32_head: bool,
}

impl WorkerStep {
    fn new(spec: &JobSpec, phase: usize, numerics: Numerics, float32_head: bool) -> WorkerStep {
        tch::manual_seed(1);
        let network = Network::new(spec, Device::Cpu);
        let (trainable, parameters) = network.set_trainable(&spec.phases[phase].train);
        let optimizer = Optimizer::new(&spec.optimizer, &parameters);
        let cut = network.cut_for(&trainable).expect("Q1's phases leave a frozen prefix");
        WorkerStep { network, trainable, optimizer, cut, numerics, float32_head }
    }
}

impl WorkerStep {
    fn loss(&self, inputs: &Tensor, labels: &Tensor) -> Tensor {
        loss_and_correct(&self.network.forward_from(inputs, self.cut, &self.trainable, true), labels).0
    }
}

impl Side for WorkerStep {
    fn step(&mut self, inputs: &Tensor, labels: &Tensor) -> Tensor {
        let loss = if self.float32_head {
            self.loss(&inputs.to_kind(Kind::Float), labels)
        } else {
            self.numerics.forward(|| self.loss(inputs, labels))
        };
        self.optimizer.zero_grad();
        loss.backward();
        self.optimizer.step();
        loss
    }
}

/// A network's trained backbone tensors (block5's in Q1's phase 2), in name order.
fn trained_backbone_tensors(network: &Network) -> Vec<Tensor> {
    let mut named: Vec<(String, Tensor)> = network
        .vs
        .variables()
        .into_iter()
        .filter(|(name, tensor)| !name.starts_with("head.") && tensor.requires_grad())
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named.into_iter().map(|(_, tensor)| tensor).collect()
}

/// Lever (b): block5's weights live in bf16 inside the network; float32 masters and RMSprop's
/// state live here; the head keeps the worker's optimizer.
struct Bf16Weights {
    inner: WorkerStep,
    /// Block5's parameters as the network holds them now (bf16 leaves).
    weights: Vec<Tensor>,
    masters: Vec<Tensor>,
    square_averages: Vec<Tensor>,
    lr: f32,
}

impl Bf16Weights {
    fn new(spec: &JobSpec, numerics: Numerics) -> Bf16Weights {
        let mut inner = WorkerStep::new(spec, 1, numerics, false);
        let head: Vec<Tensor> = inner
            .network
            .vs
            .variables()
            .into_iter()
            .filter(|(name, tensor)| name.starts_with("head.") && tensor.requires_grad())
            .map(|(_, tensor)| tensor)
            .collect();
        inner.optimizer = Optimizer::new(&spec.optimizer, &head);
        let mut weights = trained_backbone_tensors(&inner.network);
        let masters: Vec<Tensor> = weights.iter().map(|weight| weight.detach().copy()).collect();
        tch::no_grad(|| {
            for weight in &mut weights {
                let bf16 = weight.to_kind(Kind::BFloat16);
                weight.set_data(&bf16);
            }
        });
        let square_averages = masters.iter().map(Tensor::zeros_like).collect();
        Bf16Weights { inner, weights, masters, square_averages, lr: spec.optimizer.lr as f32 }
    }
}

impl Side for Bf16Weights {
    fn step(&mut self, inputs: &Tensor, labels: &Tensor) -> Tensor {
        for weight in &mut self.weights {
            // SAFETY: a live handle; the shim only resets the tensor's gradient.
            assert_eq!(unsafe { trainq_clear_grad(weight.as_mut_ptr()) }, 0);
        }
        let loss = self.inner.step(inputs, labels);
        tch::no_grad(|| {
            for ((weight, master), square_average) in self.weights.iter().zip(&self.masters).zip(&self.square_averages)
            {
                rmsprop_from_bf16(master, &weight.grad(), square_average, weight, self.lr);
            }
        });
        loss
    }
}

/// Keras' RMSprop (rho 0.9, epsilon 1e-7, no momentum or decay) on a float32 `master` from a bf16
/// `gradient`, in one pass that also writes the rounded new weight into the bf16 `copy`: the same
/// float32 arithmetic as `optim::rmsprop_in_one_pass`, and the same round-to-nearest-even as
/// libtorch's cast.
fn rmsprop_from_bf16(master: &Tensor, gradient: &Tensor, square_average: &Tensor, copy: &Tensor, lr: f32) {
    let n = master.numel();
    for (tensor, kind) in
        [(master, Kind::Float), (gradient, Kind::BFloat16), (square_average, Kind::Float), (copy, Kind::BFloat16)]
    {
        assert!(tensor.kind() == kind && tensor.is_contiguous() && tensor.numel() == n, "{:?}", tensor.size());
    }
    // SAFETY: four distinct contiguous CPU tensors of `n` elements of the kinds checked above; no
    // other code touches them while the slices live (under no_grad), and each thread below takes
    // its own disjoint chunk of each.
    let (p, g, s, c) = unsafe {
        (
            std::slice::from_raw_parts_mut(master.data_ptr() as *mut f32, n),
            std::slice::from_raw_parts(gradient.data_ptr() as *const u16, n),
            std::slice::from_raw_parts_mut(square_average.data_ptr() as *mut f32, n),
            std::slice::from_raw_parts_mut(copy.data_ptr() as *mut u16, n),
        )
    };
    let (alpha, rest, eps) = (0.9f32, (1.0 - 0.9f64) as f32, 1e-7f32);
    let update = |p: &mut [f32], g: &[u16], s: &mut [f32], c: &mut [u16]| {
        for (((p, &g), s), c) in p.iter_mut().zip(g).zip(s.iter_mut()).zip(c.iter_mut()) {
            let g = f32::from_bits((g as u32) << 16);
            *s = *s * alpha + (g * rest) * g;
            *p -= (g / (s.sqrt() + eps)) * lr;
            *c = bf16_nearest_even(*p);
        }
    };
    // Threads as the float32 side's update takes them: libtorch's count, 64 Ki elements at least each.
    let threads = (tch::get_num_threads().max(1) as usize).min(n.div_ceil(1 << 16)).max(1);
    let chunk = n.div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        for (((p, g), s), c) in
            p.chunks_mut(chunk).zip(g.chunks(chunk)).zip(s.chunks_mut(chunk)).zip(c.chunks_mut(chunk))
        {
            scope.spawn(move || update(p, g, s, c));
        }
    });
}

/// A float32 rounded to bf16 as libtorch rounds (`c10::BFloat16`'s round-to-nearest-even).
fn bf16_nearest_even(value: f32) -> u16 {
    if value.is_nan() {
        return 0x7FC0;
    }
    let bits = value.to_bits();
    ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) as u16
}

/// Median of per-step seconds.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Times `rounds` alternating rounds of `steps` steps of each side on the same batches; returns the
/// median seconds per step of each and both final losses.
fn race<'a>(config: &LeverBench, cached: &Cached, off: &'a mut dyn Side, on: &'a mut dyn Side) -> (f64, f64, f64, f64) {
    let (mut off_times, mut on_times) = (vec![], vec![]);
    let (mut off_loss, mut on_loss) = (0.0, 0.0);
    // One warm-up step each (allocator, oneDNN primitive caches), on the same batch.
    let (inputs, labels) = cached.batch(0, config.batch_size);
    let _ = off.step(&inputs, &labels);
    let _ = on.step(&inputs, &labels);
    for round in 0..config.rounds {
        for (side, times, loss) in [(&mut *off, &mut off_times, &mut off_loss), (&mut *on, &mut on_times, &mut on_loss)]
        {
            let started = Instant::now();
            for step in 0..config.steps {
                let (inputs, labels) = cached.batch(1 + round * config.steps + step, config.batch_size);
                *loss = side.step(&inputs, &labels).double_value(&[]);
            }
            times.push(started.elapsed().as_secs_f64() / config.steps as f64);
        }
    }
    (median(off_times), median(on_times), off_loss, on_loss)
}

/// Runs both levers and prints one JSON line.
pub fn run(config: LeverBench) -> anyhow::Result<()> {
    tch::set_num_threads(config.threads as i32);
    let spec = JobSpec::parse(Q1.as_bytes()).map_err(|err| anyhow::anyhow!("{err}"))?;
    let numerics = Numerics::new(Precision::Auto, Device::Cpu, CpuBf16::detect());
    anyhow::ensure!(numerics.bf16, "the levers are about bf16 autocast; this CPU computes Q1 in float32");
    // A few hundred rows: enough distinct batches, little memory (block4's activations at 128 px
    // are 64 KB an image in bf16).
    let count = 20 * config.batch_size;

    let cached = Cached::new(count, &[512]);
    let mut off = WorkerStep::new(&spec, 0, numerics, false);
    let mut on = WorkerStep::new(&spec, 0, numerics, true);
    let (phase1_off, phase1_on, phase1_off_loss, phase1_on_loss) = race(&config, &cached, &mut off, &mut on);

    let cached = Cached::new(count, &[512, 8, 8]);
    let mut off = WorkerStep::new(&spec, 1, numerics, false);
    let mut on = Bf16Weights::new(&spec, numerics);
    let (phase2_off, phase2_on, phase2_off_loss, phase2_on_loss) = race(&config, &cached, &mut off, &mut on);
    // The same arithmetic: block5's float32 weights must match bit for bit.
    let block5 = trained_backbone_tensors(&off.network);
    let identical = block5.len() == on.masters.len()
        && block5.iter().zip(&on.masters).all(|(autocast, master)| autocast.detach().equal(master));

    println!(
        "{}",
        serde_json::json!({
            "precision": numerics.describe(), "threads": config.threads, "batch_size": config.batch_size,
            "steps": config.steps, "rounds": config.rounds,
            "phase1_step_seconds": {"autocast": phase1_off, "float32_head": phase1_on},
            "phase1_final_loss": {"autocast": phase1_off_loss, "float32_head": phase1_on_loss},
            "phase2_step_seconds": {"autocast": phase2_off, "bf16_weights": phase2_on},
            "phase2_final_loss": {"autocast": phase2_off_loss, "bf16_weights": phase2_on_loss},
            "phase2_block5_weights_identical": identical,
        })
    );
    Ok(())
}
