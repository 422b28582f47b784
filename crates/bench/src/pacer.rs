//! Waiting for an open-loop op's due time with sub-millisecond precision.
//!
//! tokio's timer works in 1 ms ticks: every sleep that ends within the same
//! millisecond wakes at once. In the open loop that turns an evenly spaced
//! schedule into a burst every millisecond (at 25,000 ops/s, 25 requests sent
//! together), and the burst's last requests queue behind the first ones, on
//! the server and in the generator. The latency measured is then partly the
//! generator's own doing. A Linux timerfd (a high-resolution timer, woken
//! through tokio's reactor) ends each wait within microseconds of its due
//! time, at the cost of two system calls per wait; where it is unavailable,
//! tokio's timer is used.

use std::time::Duration;

use tokio::time::Instant;

/// How long past its due time a timerfd wait may run before tokio's timer
/// ends it.
const BACKSTOP: Duration = Duration::from_millis(20);

/// One connection's timer.
pub enum Pacer {
    #[cfg(target_os = "linux")]
    Timerfd {
        fd: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
        grid: Grid,
    },
    Tokio,
}

/// Due times are rounded up to `origin + k * quantum`, the same instants for
/// every connection, so connections due close together share one wake-up of
/// the generator (a zero quantum keeps every due time as it is).
#[derive(Debug, Clone, Copy)]
pub struct Grid {
    pub origin: Instant,
    pub quantum: Duration,
}

impl Grid {
    fn round_up(&self, due: Instant) -> Instant {
        let q = self.quantum.as_nanos();
        if q == 0 || due <= self.origin {
            return due;
        }
        let since = (due - self.origin).as_nanos();
        let steps = since.div_ceil(q);
        self.origin + Duration::from_nanos((steps * q).min(u64::MAX as u128) as u64)
    }
}

impl Pacer {
    /// A timerfd-backed pacer on `grid`, or tokio's timer if one cannot be
    /// made. Must be called within a Tokio runtime.
    pub fn new(grid: Grid) -> Pacer {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::{FromRawFd, OwnedFd};
            // SAFETY: timerfd_create has no memory arguments; on success the
            // fd is new and ours, so OwnedFd may own it.
            let fd = unsafe {
                libc::timerfd_create(
                    libc::CLOCK_MONOTONIC,
                    libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
                )
            };
            if fd >= 0 {
                // SAFETY: see above.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                // SAFETY: an OwnedFd's raw fd stays open, and the same, for
                // as long as the OwnedFd lives, which the AsyncFd owns.
                let registered = unsafe {
                    tokio::io::unix::AsyncFd::register_with_interest(
                        owned,
                        tokio::io::Interest::READABLE,
                    )
                };
                if let Ok(fd) = registered {
                    return Pacer::Timerfd { fd, grid };
                }
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = grid;
        Pacer::Tokio
    }

    /// Wait until `due` (at once if it has passed), or the grid point after it.
    pub async fn sleep_until(&mut self, due: Instant) {
        if due <= Instant::now() {
            return;
        }
        match self {
            #[cfg(target_os = "linux")]
            Pacer::Timerfd { fd, grid } => {
                let due = grid.round_up(due);
                let wait = due.saturating_duration_since(Instant::now());
                if wait.is_zero() {
                    // Passed while rounding; a zero timer value would
                    // disarm the timer, and the wait would never end.
                    return;
                }
                // tokio's timer as a backstop: a wake-up lost for any reason
                // makes one send late, never a connection stuck.
                let backstop = wait + BACKSTOP;
                match tokio::time::timeout(backstop, timerfd_wait(fd, wait)).await {
                    Ok(Ok(())) | Err(_) => {}
                    // Never expected; do not lose the schedule over it.
                    Ok(Err(_)) => tokio::time::sleep_until(due).await,
                }
            }
            Pacer::Tokio => tokio::time::sleep_until(due).await,
        }
    }
}

#[cfg(target_os = "linux")]
async fn timerfd_wait(
    fd: &tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
    wait: Duration,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let raw = fd.get_ref().as_raw_fd();
    let spec = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        // Never all zero: that disarms the timer instead of firing it.
        it_value: libc::timespec {
            tv_sec: wait.as_secs() as libc::time_t,
            tv_nsec: wait.subsec_nanos().max(u32::from(wait.as_secs() == 0)) as libc::c_long,
        },
    };
    // SAFETY: `spec` is a valid itimerspec; the old value is not asked for.
    if unsafe { libc::timerfd_settime(raw, 0, &spec, std::ptr::null_mut()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    loop {
        let mut guard = fd.readable().await?;
        let mut expirations = 0u64;
        // SAFETY: reads at most 8 bytes into a u64 we own.
        let n = unsafe {
            libc::read(
                raw,
                (&mut expirations as *mut u64).cast::<libc::c_void>(),
                std::mem::size_of::<u64>(),
            )
        };
        if n == std::mem::size_of::<u64>() as isize {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.kind() == std::io::ErrorKind::WouldBlock {
            // Woken for an earlier expiry already consumed: wait again.
            guard.clear_ready();
            continue;
        }
        return Err(err);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wakes_close_to_the_due_time() {
        let mut p = Pacer::new(Grid {
            origin: Instant::now(),
            quantum: Duration::ZERO,
        });
        let mut worst = Duration::ZERO;
        for i in 0..20 {
            let due = Instant::now() + Duration::from_micros(300 + 37 * i);
            p.sleep_until(due).await;
            let now = Instant::now();
            assert!(now >= due, "woke {:?} early", due - now);
            worst = worst.max(now - due);
        }
        // tokio's own timer would be up to a millisecond late; a timerfd is
        // usually within tens of microseconds (allow for a busy machine).
        #[cfg(target_os = "linux")]
        assert!(worst < Duration::from_millis(20), "{worst:?}");
        // A due time in the past returns at once.
        p.sleep_until(Instant::now() - Duration::from_millis(1))
            .await;
    }

    #[tokio::test]
    async fn due_times_just_ahead_never_hang() {
        // Due times a few µs ahead, rounded onto a grid: the rounded wait is
        // often already over by the time the timer is set.
        let mut p = Pacer::new(Grid {
            origin: Instant::now(),
            quantum: Duration::from_micros(50),
        });
        let all = async {
            for i in 0..2000u64 {
                p.sleep_until(Instant::now() + Duration::from_nanos(1 + i % 7))
                    .await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), all)
            .await
            .expect("a wait hung");
        #[cfg(target_os = "linux")]
        if let Pacer::Timerfd { fd, .. } = &p {
            // A zero wait must fire, not disarm the timer.
            tokio::time::timeout(Duration::from_secs(1), timerfd_wait(fd, Duration::ZERO))
                .await
                .expect("a zero wait hung")
                .unwrap();
        }
    }

    #[test]
    fn grid_rounds_up_to_its_points() {
        let origin = Instant::now();
        let g = Grid {
            origin,
            quantum: Duration::from_micros(250),
        };
        let at = |us: u64| origin + Duration::from_micros(us);
        assert_eq!(g.round_up(at(0)), at(0));
        assert_eq!(g.round_up(at(1)), at(250));
        assert_eq!(g.round_up(at(250)), at(250));
        assert_eq!(g.round_up(at(251)), at(500));
        let exact = Grid {
            origin,
            quantum: Duration::ZERO,
        };
        assert_eq!(exact.round_up(at(123)), at(123));
    }
}
