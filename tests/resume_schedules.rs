//! Exact resume for every epoch-based schedule (step, cosine, exponential, polynomial,
//! multi-step), each with warm-up and Adam: 2 epochs, a checkpoint, a new model restored
//! from it and 2 more epochs give bit for bit the weights and optimizer state of 4
//! uninterrupted epochs. One-cycle and reduce-on-plateau have their own test
//! (`tests/schedule_training.rs::new_schedules_resume_exactly`).

mod common;

use common::{gpu, TempDir};
use steadygrad::checkpoint::{load_checkpoint, save_checkpoint, TrainingState};
use steadygrad::gpu::GpuEngine;
use steadygrad::{FitOptions, LrSchedule, MlpSpec, Model, Optimizer};

#[test]
fn every_epoch_schedule_resumes_exactly() {
    let tmp = TempDir::new("resume-schedules");
    let path = tmp.path().join("ckpt.safetensors");
    let data = steadygrad::data::synthetic::spirals(20, 3, 0.05, 1);
    let opts = |epochs| FitOptions {
        epochs,
        batch_size: 16,
        shuffle_seed: 7,
        drop_last: false,
    };
    let schedules = [
        LrSchedule::Step {
            step_size: 1,
            gamma: 0.5,
        },
        LrSchedule::Cosine {
            t_max: 4,
            eta_min: 1e-4,
        },
        LrSchedule::Exponential { gamma: 0.7 },
        LrSchedule::Polynomial {
            total_iters: 3,
            power: 2.0,
        },
        LrSchedule::MultiStep {
            milestones: vec![1, 3],
            gamma: 0.3,
        },
    ];
    for schedule in schedules {
        let spec = MlpSpec::new(2, &[12, 9], 3)
            .optimizer(Optimizer::adam(1e-2))
            .schedule(schedule.clone())
            .warmup_steps(5)
            .seed(2);
        let new_model = || Model::new(spec.clone(), Box::new(GpuEngine::new(gpu()))).unwrap();
        let mut straight = new_model();
        straight.fit(&data, None, &opts(4), |_| {}).unwrap();

        let mut first = new_model();
        first.fit(&data, None, &opts(2), |_| {}).unwrap();
        let state = TrainingState {
            epoch: first.epoch(),
            ..TrainingState::default()
        };
        save_checkpoint(&mut first, &path, &state).unwrap();
        let mut resumed = new_model();
        load_checkpoint(&path)
            .unwrap()
            .restore(&mut resumed)
            .unwrap();
        resumed.fit(&data, None, &opts(2), |_| {}).unwrap();
        assert_eq!(resumed.epoch(), 4, "{schedule:?}");
        assert_eq!(
            resumed.state_dict().unwrap(),
            straight.state_dict().unwrap(),
            "{schedule:?}"
        );
        assert_eq!(
            resumed.optimizer_state().unwrap(),
            straight.optimizer_state().unwrap(),
            "{schedule:?}"
        );

        // The comparison can fail: restarting the schedule at epoch 0 lands elsewhere.
        let mut restarted = new_model();
        let ckpt = load_checkpoint(&path).unwrap();
        restarted.load_state_dict(&ckpt.tensors).unwrap();
        restarted.load_optimizer_state(&ckpt.optimizer).unwrap();
        restarted.fit(&data, None, &opts(2), |_| {}).unwrap();
        assert_ne!(
            restarted.state_dict().unwrap(),
            straight.state_dict().unwrap(),
            "{schedule:?}: restarting the schedule went unnoticed"
        );
    }
}
