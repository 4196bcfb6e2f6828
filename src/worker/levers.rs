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
//!   The off side is the worker's step as it is (lever (b) included).
//! - Phase 2 (block5 and the head over block4's activations, `[n, 512, 8, 8]`). Lever (b), which
//!   the worker now takes on a bf16 CPU (`Optimizer::keep_bf16_weights`): the trained weights held
//!   in bf16 for the forward and backward passes, with float32 masters that the optimizer updates
//!   from the bf16 gradients, writing the next step's bf16 weights in the same pass over memory.
//!   Autocast instead casts about 28 MB of float32 weights to bf16 every forward pass and the bf16
//!   gradients back to float32 every backward pass. The arithmetic is the same (the same
//!   round-to-nearest-even casts, the same float32 update), so both sides must end with the same
//!   weights, bit for bit; the bench checks it.

use crate::evaluate::loss_and_correct;
use crate::model::{Cut, Network, Trainable};
use crate::optim::Optimizer;
use crate::precision::{CpuBf16, Numerics};
use std::time::Instant;
use tch::{Device, Kind, Tensor};
use trainq::domain::spec::{JobSpec, Precision};

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
    /// `bf16_weights`: lever (b), the optimizer's bf16 working copies.
    fn new(spec: &JobSpec, phase: usize, numerics: Numerics, float32_head: bool, bf16_weights: bool) -> WorkerStep {
        tch::manual_seed(1);
        let network = Network::new(spec, Device::Cpu);
        let (trainable, parameters) = network.set_trainable(&spec.phases[phase].train);
        let mut optimizer = Optimizer::new(&spec.optimizer, &parameters);
        if bf16_weights {
            optimizer.keep_bf16_weights();
        }
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
        self.optimizer.lower();
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

    // Lever (a) against the worker's step as it is, lever (b) included (its copies are for autocast).
    let cached = Cached::new(count, &[512]);
    let mut off = WorkerStep::new(&spec, 0, numerics, false, numerics.bf16_weights());
    let mut on = WorkerStep::new(&spec, 0, numerics, true, false);
    let (phase1_off, phase1_on, phase1_off_loss, phase1_on_loss) = race(&config, &cached, &mut off, &mut on);

    let cached = Cached::new(count, &[512, 8, 8]);
    let mut off = WorkerStep::new(&spec, 1, numerics, false, false);
    let mut on = WorkerStep::new(&spec, 1, numerics, false, true);
    let (phase2_off, phase2_on, phase2_off_loss, phase2_on_loss) = race(&config, &cached, &mut off, &mut on);
    // The same arithmetic: block5's float32 weights must match bit for bit.
    let (casts, copies) = (trained_backbone_tensors(&off.network), trained_backbone_tensors(&on.network));
    assert!(on.optimizer.has_bf16_weights() && !copies.is_empty());
    let identical = casts.len() == copies.len() && casts.iter().zip(&copies).all(|(a, b)| a.detach().equal(b));

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
