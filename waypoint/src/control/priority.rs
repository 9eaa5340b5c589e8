//! The config thread yields the CPU to the data path: translating a large mesh's state takes a
//! core for a second or more per push, and under endpoint churn pushes come back to back.

/// The nice value of the xDS thread (translation and publishing) and of the thread that frees
/// replaced snapshots. On Linux's fair scheduler a nice-10 thread gets about a tenth of the CPU
/// a nice-0 data-path worker gets when both want it, and all of it when the workers are idle.
pub const CONFIG_THREAD_NICE: i32 = 10;

/// Lower the calling thread's scheduling priority to `nice` (the nice value is per thread on
/// Linux, set through the thread id). Never raises it: a thread already at `nice` or lower
/// priority keeps its own. An error (e.g. a seccomp profile without `setpriority`) is the
/// caller's to log; the thread then runs at the process's priority, as before.
pub fn lower_this_thread(nice: i32) -> std::io::Result<()> {
    let tid = rustix::thread::gettid();
    let current = rustix::process::getpriority_process(Some(tid))?;
    if current >= nice {
        return Ok(());
    }
    rustix::process::setpriority_process(Some(tid), nice)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own_nice() -> i32 {
        rustix::process::getpriority_process(Some(rustix::thread::gettid())).expect("getpriority")
    }

    #[test]
    fn only_the_calling_thread_is_lowered_and_never_raised() {
        let main_before = own_nice();
        let target = (main_before + 5).min(19);
        let (lowered, again) = std::thread::spawn(move || {
            lower_this_thread(target).expect("lowered");
            let lowered = own_nice();
            // Asking for a higher priority than it has changes nothing.
            lower_this_thread(target - 3).expect("no-op");
            (lowered, own_nice())
        })
        .join()
        .expect("thread");
        assert_eq!(lowered, target);
        assert_eq!(again, target);
        assert_eq!(own_nice(), main_before, "the calling thread only");
    }
}
