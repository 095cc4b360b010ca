//! Asynchronous readbacks: copies into a mapped staging buffer, submitted on their own or
//! behind a stage in the same command buffer (`Engine::run_and_read`).

use super::{GpuEngine, StagingPool, STAGING_POOL_MAX};
use crate::device::GpuContext;
use crate::engine::{PendingRead, PlanId};
use crate::tensor::TensorId;
use anyhow::{bail, ensure, Result};
use std::sync::{Arc, Mutex};

impl GpuEngine {
    /// Appends copies of `tensors` into a staging buffer to `encoder`, submits it and
    /// starts mapping the buffer; `what` names the submission in errors.
    pub(super) fn submit_with_readback(
        &mut self,
        mut encoder: wgpu::CommandEncoder,
        plan: PlanId,
        tensors: &[TensorId],
        what: impl FnOnce() -> String,
    ) -> Result<Box<dyn PendingRead>> {
        self.counters.readbacks += 1;
        let mut lens = Vec::with_capacity(tensors.len());
        let total: usize = tensors
            .iter()
            .map(|&t| self.tensor_buffer(plan, t).map(|(_, len, _)| len * 4))
            .sum::<Result<usize>>()?;
        ensure!(total > 0, "nothing to read");
        let reused = {
            let mut pool = self.staging_pool.lock().unwrap_or_else(|p| p.into_inner());
            pool.iter()
                .position(|b| b.size() == total as u64)
                .map(|i| pool.swap_remove(i))
        };
        let staging = reused.unwrap_or_else(|| {
            self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("async readback"),
                size: total as u64,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        });
        let mut offset = 0u64;
        for &t in tensors {
            let (buf, len, _) = self.tensor_buffer(plan, t)?;
            let bytes = (len * 4) as u64;
            encoder.copy_buffer_to_buffer(buf, 0, &staging, offset, bytes);
            offset += bytes;
            lens.push(len);
        }
        let ctx = &self.ctx;
        ctx.scoped(what, || ctx.queue.submit([encoder.finish()]))?;
        let state = Arc::new(Mutex::new(None));
        let sink = state.clone();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            *sink.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
        });
        Ok(Box::new(GpuPendingRead {
            ctx: self.ctx.clone(),
            staging,
            lens,
            state,
            collected: false,
            pool: self.staging_pool.clone(),
        }))
    }
}

type MapResult = std::result::Result<(), wgpu::BufferAsyncError>;

/// A staging buffer being mapped; the map callback fills `state` during a device poll.
struct GpuPendingRead {
    ctx: Arc<GpuContext>,
    staging: wgpu::Buffer,
    lens: Vec<usize>,
    state: Arc<Mutex<Option<MapResult>>>,
    collected: bool,
    /// Where the buffer goes back once collected and unmapped.
    pool: StagingPool,
}

impl GpuPendingRead {
    fn take_state(&self) -> Option<MapResult> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).take()
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
                    None if wait => bail!("the GPU finished but the readback was not mapped"),
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
