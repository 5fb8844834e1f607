//! Small helpers the command line, the worker and the app share: error messages, device
//! names, this process's memory.

use anyhow::Context;
use candle_core::Device;

use crate::model::load;

/// The error and its causes on one line, candle errors without their backtraces.
pub fn error_chain(e: &anyhow::Error) -> String {
    e.chain()
        .map(|cause| match cause.downcast_ref::<candle_core::Error>() {
            Some(c) => load::error_message(c),
            None => cause.to_string(),
        })
        .collect::<Vec<_>>()
        .join(": ")
}

/// Parses `--device`.
pub fn parse_device(name: &str) -> anyhow::Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => {
            Device::new_cuda(0).context("opening CUDA device 0 (built with --features cuda?)")
        }
        "metal" => {
            Device::new_metal(0).context("opening the Metal device (built with --features metal?)")
        }
        other => anyhow::bail!("unknown device '{other}' (use cpu, cuda or metal)"),
    }
}

/// Peak resident memory of this process in bytes (Linux `VmHWM`), when known.
pub fn peak_memory_bytes() -> Option<u64> {
    proc_status_bytes("VmHWM:")
}

/// Resident memory of this process now, in bytes (Linux `VmRSS`), when known.
pub fn memory_bytes() -> Option<u64> {
    proc_status_bytes("VmRSS:")
}

fn proc_status_bytes(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
