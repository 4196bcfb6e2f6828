//! The box's devices: NVIDIA GPUs found through NVML, or CPU slots when there are none. A device
//! is a slot one job holds at a time; which job holds which slot is the `jobs` table's `device`.

use nvml_wrapper::Nvml;
use serde::Serialize;
use std::sync::Arc;

/// What kind of slot a device is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum DeviceKind {
    /// An NVIDIA GPU by its NVML/CUDA index.
    Gpu {
        /// Index as CUDA_VISIBLE_DEVICES understands it.
        index: u32,
    },
    /// A share of the CPU cores.
    Cpu,
    /// A place in the Slurm cluster: one job trainq has handed to Slurm (the cluster picks the
    /// node and, with `gpus` > 0, the GPUs).
    Slurm {
        /// GPUs each job asks Slurm for.
        gpus: u32,
    },
}

/// One slot a job can run on.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceSlot {
    /// Stable id, `gpu0` or `cpu0`; what the `jobs.device` column holds.
    pub id: String,
    /// GPU or CPU.
    #[serde(flatten)]
    pub kind: DeviceKind,
    /// Marketing name (GPU) or a description of the core share (CPU).
    pub name: String,
    /// A GPU's total memory in bytes (what jobs are packed into); absent for CPU slots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_total: Option<u64>,
}

/// A process NVML sees on a GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuProcess {
    /// Its pid (in NVML's view: the host's pid namespace).
    pub pid: u32,
    /// GPU memory it uses, when NVML can tell.
    pub used_bytes: Option<u64>,
}

/// Live numbers for a GPU, read from NVML at request time.
#[derive(Debug, Clone, Serialize)]
pub struct GpuReading {
    /// Total memory in bytes.
    pub memory_total: u64,
    /// Used memory in bytes (by anyone, trainq or not).
    pub memory_used: u64,
    /// GPU utilisation in percent over NVML's last sample period.
    pub utilization_percent: u32,
}

/// The device inventory, fixed at start.
#[derive(Clone)]
pub struct Inventory {
    slots: Vec<DeviceSlot>,
    nvml: Option<Arc<Nvml>>,
    threads_per_slot: usize,
}

impl std::fmt::Debug for Inventory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inventory").field("slots", &self.slots).field("nvml", &self.nvml.is_some()).finish()
    }
}

impl Inventory {
    /// Finds GPUs with NVML; without NVML or GPUs, makes `cpu_slots` CPU slots that share the cores.
    pub fn discover(cpu_slots: usize, use_gpus: bool) -> Inventory {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        if use_gpus {
            match Nvml::init() {
                Ok(nvml) => {
                    let slots = gpu_slots(&nvml);
                    if !slots.is_empty() {
                        tracing::info!(gpus = slots.len(), "found NVIDIA GPUs through NVML");
                        // Data loading on the host is all a GPU job needs cores for.
                        let threads_per_slot = (cores / slots.len()).max(1);
                        return Inventory { slots, nvml: Some(Arc::new(nvml)), threads_per_slot };
                    }
                    tracing::info!("NVML found no GPUs; using CPU slots");
                }
                Err(err) => tracing::info!(%err, "NVML unavailable; using CPU slots"),
            }
        }
        Inventory::cpu_only(cpu_slots, cores)
    }

    /// An inventory of CPU slots only, `cores` split evenly between them.
    pub fn cpu_only(cpu_slots: usize, cores: usize) -> Inventory {
        let cpu_slots = cpu_slots.max(1);
        let threads_per_slot = (cores / cpu_slots).max(1);
        let slots = (0..cpu_slots)
            .map(|n| DeviceSlot {
                id: format!("cpu{n}"),
                kind: DeviceKind::Cpu,
                name: format!("CPU slot ({threads_per_slot} of {cores} cores)"),
                memory_total: None,
            })
            .collect();
        Inventory { slots, nvml: None, threads_per_slot }
    }

    /// `jobs` places in a Slurm cluster: how many jobs trainq hands to Slurm at once (its own
    /// fair share decides which), each asking for `gpus` GPUs and `cpus` cores.
    pub fn slurm(jobs: usize, gpus: u32, cpus: usize) -> Inventory {
        let slots = (0..jobs.max(1))
            .map(|n| DeviceSlot {
                id: format!("slurm{n}"),
                kind: DeviceKind::Slurm { gpus },
                name: format!("Slurm job ({gpus} GPU, {cpus} CPU)"),
                memory_total: None,
            })
            .collect();
        Inventory { slots, nvml: None, threads_per_slot: cpus.max(1) }
    }

    /// Every slot.
    pub fn slots(&self) -> &[DeviceSlot] {
        &self.slots
    }

    /// The slot with this id.
    pub fn slot(&self, id: &str) -> Option<&DeviceSlot> {
        self.slots.iter().find(|slot| slot.id == id)
    }

    /// CPU threads a job on one slot may use.
    pub fn threads_per_slot(&self) -> usize {
        self.threads_per_slot
    }

    /// Live memory and utilisation of a GPU slot; `None` for CPU slots or when NVML fails.
    pub fn reading(&self, slot: &DeviceSlot) -> Option<GpuReading> {
        let DeviceKind::Gpu { index } = slot.kind else { return None };
        let device = self.nvml.as_ref()?.device_by_index(index).ok()?;
        let memory = device.memory_info().ok()?;
        let utilization = device.utilization_rates().ok()?;
        Some(GpuReading { memory_total: memory.total, memory_used: memory.used, utilization_percent: utilization.gpu })
    }

    /// The compute processes on a GPU slot (anyone's); `None` for CPU slots or when NVML fails.
    pub fn gpu_processes(&self, slot: &DeviceSlot) -> Option<Vec<GpuProcess>> {
        let DeviceKind::Gpu { index } = slot.kind else { return None };
        let device = self.nvml.as_ref()?.device_by_index(index).ok()?;
        let processes = device.running_compute_processes().ok()?;
        Some(
            processes
                .into_iter()
                .map(|process| GpuProcess {
                    pid: process.pid,
                    used_bytes: match process.used_gpu_memory {
                        nvml_wrapper::enums::device::UsedGpuMemory::Used(bytes) => Some(bytes),
                        nvml_wrapper::enums::device::UsedGpuMemory::Unavailable => None,
                    },
                })
                .collect(),
        )
    }
}

fn gpu_slots(nvml: &Nvml) -> Vec<DeviceSlot> {
    let count = nvml.device_count().unwrap_or(0);
    (0..count)
        .filter_map(|index| {
            let device = nvml.device_by_index(index).ok()?;
            let name = device.name().unwrap_or_else(|_| String::from("NVIDIA GPU"));
            let memory_total = device.memory_info().ok().map(|memory| memory.total);
            Some(DeviceSlot { id: format!("gpu{index}"), kind: DeviceKind::Gpu { index }, name, memory_total })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_slots_split_the_cores() {
        let inventory = Inventory::cpu_only(2, 8);
        let ids: Vec<&str> = inventory.slots().iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["cpu0", "cpu1"]);
        assert_eq!(inventory.threads_per_slot(), 4);
        assert!(inventory.reading(&inventory.slots()[0]).is_none());
        assert_eq!(Inventory::cpu_only(0, 1).slots().len(), 1, "at least one slot");
    }
}
