//! An asynchronous readback of the GPU engine: a staging buffer being mapped, collected by
//! polling, and returned to the engine's pool of staging buffers afterwards.

use super::engine::{StagingPool, STAGING_POOL_MAX};
use crate::device::GpuContext;
use crate::engine::PendingRead;
use anyhow::{bail, ensure, Result};
use std::sync::{Arc, Mutex};

pub(super) type MapResult = std::result::Result<(), wgpu::BufferAsyncError>;

/// A staging buffer being mapped; the map callback fills `state` during a device poll.
pub(super) struct GpuPendingRead {
    pub(super) ctx: Arc<GpuContext>,
    pub(super) staging: wgpu::Buffer,
    pub(super) lens: Vec<usize>,
    pub(super) state: Arc<Mutex<Option<MapResult>>>,
    pub(super) collected: bool,
    /// Where the buffer goes back once collected and unmapped.
    pub(super) pool: StagingPool,
}

impl GpuPendingRead {
    fn take_state(&self) -> Option<MapResult> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl GpuPendingRead {
    /// The map's result once its callback has run. wgpu runs a finished map's callback in
    /// whichever thread's poll collects it; when threads share the device, our own wait
    /// can return while another thread is still running ours, so this polls again until
    /// the result arrives (bounded: a callback that never comes is an error).
    fn wait_for_callback(&self) -> Result<MapResult> {
        let start = std::time::Instant::now();
        loop {
            if let Some(s) = self.take_state() {
                return Ok(s);
            }
            if start.elapsed() > std::time::Duration::from_secs(10) {
                bail!("the GPU finished but the readback was not mapped within 10 s");
            }
            std::thread::sleep(std::time::Duration::from_micros(100));
            self.ctx.wait()?;
        }
    }
}

impl PendingRead for GpuPendingRead {
    fn poll(&mut self, wait: bool) -> Result<Option<Vec<Vec<f32>>>> {
        ensure!(!self.collected, "this read was already collected");
        let status = match self.take_state() {
            Some(s) => s,
            None => {
                if wait {
                    self.ctx.wait()?;
                } else {
                    // One non-blocking look: runs the callbacks of finished work only.
                    self.ctx
                        .device
                        .poll(wgpu::PollType::Poll)
                        .map_err(|e| anyhow::anyhow!("polling the GPU failed: {e}"))?;
                    self.ctx.take_error()?;
                }
                match self.take_state() {
                    Some(s) => s,
                    None if wait => self.wait_for_callback()?,
                    None => return Ok(None),
                }
            }
        };
        status.map_err(|e| anyhow::anyhow!("mapping a readback failed: {e}"))?;
        let values = {
            let view = self
                .staging
                .get_mapped_range(..)
                .map_err(|e| anyhow::anyhow!("reading a readback: {e}"))?;
            let all: &[f32] = bytemuck::cast_slice(&view);
            let mut out = Vec::with_capacity(self.lens.len());
            let mut at = 0;
            for &len in &self.lens {
                out.push(all[at..at + len].to_vec());
                at += len;
            }
            out
        };
        self.staging.unmap();
        self.collected = true;
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < STAGING_POOL_MAX {
            pool.push(self.staging.clone());
        }
        Ok(Some(values))
    }
}
