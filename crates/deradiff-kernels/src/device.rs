//! The device path: what the public functions run on devices other than the CPU (CUDA, Metal),
//! and a switch that runs it on the CPU too, so that the same code is tested where no GPU is.

use std::cell::Cell;

use candle_core::Device;

thread_local! {
    /// Whether this thread runs the device path on the CPU ([`with_device_path`]).
    static FORCED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with every function of this crate taking the path it takes on a GPU also for CPU
/// tensors (on this thread, for the duration of `f`, restored afterwards even if `f` panics):
/// candle's ops in the tensors' own dtype instead of the fused f32 CPU kernels. For tests that
/// check the device path against the CPU kernels, and for counting its ops, on a machine without
/// a GPU; it is slower than the CPU kernels and not meant for anything else.
#[doc(hidden)]
pub fn with_device_path<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            FORCED.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(FORCED.with(|c| c.replace(true)));
    f()
}

/// Whether a tensor on `device` takes the device path: any device but the CPU, and the CPU
/// inside [`with_device_path`].
pub(crate) fn takes_device_path(device: &Device) -> bool {
    !device.is_cpu() || FORCED.with(Cell::get)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_switch_is_scoped_and_restored_after_a_panic() {
        assert!(!takes_device_path(&Device::Cpu));
        with_device_path(|| {
            assert!(takes_device_path(&Device::Cpu));
            with_device_path(|| assert!(takes_device_path(&Device::Cpu)));
            assert!(takes_device_path(&Device::Cpu));
        });
        assert!(!takes_device_path(&Device::Cpu));
        let panicked = std::panic::catch_unwind(|| with_device_path(|| panic!("inside")));
        assert!(panicked.is_err());
        assert!(!takes_device_path(&Device::Cpu));
        // Other threads are not affected.
        with_device_path(|| std::thread::spawn(|| assert!(!takes_device_path(&Device::Cpu))).join().unwrap());
    }
}
