//! Asynchronous readbacks: copies into a mapped staging buffer, submitted on their own or
//! behind a stage in the same command buffer (`Engine::run_and_read`).

use super::GpuEngine;
use crate::engine::{PendingRead, PlanId};
use crate::gpu::pending_read::GpuPendingRead;
use crate::tensor::TensorId;
use anyhow::{ensure, Result};
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
