//! File descriptors, weir's second budget: at start the soft `RLIMIT_NOFILE` is raised to the
//! hard limit (a service mesh proxy needs descriptors more than anything the default soft limit
//! of 1024 was made for), and `[proxy] max_connections`, when unset, is derived from what the
//! limit holds: two descriptors per proxied connection (the client's and the endpoint's) plus a
//! reserve for weir's own (listeners, io_uring instances, the admin server, the log shipper,
//! the config watcher, eBPF objects). A configured value the limit cannot hold is warned about
//! (`weir check`, and at start): past it, connects and accepts fail on weir's own limit, which
//! weir answers as `overloaded` rather than blaming an endpoint. Must not: run on a worker.

use std::io;

/// `max_connections` when unset and the limit allows it (and the most it defaults to).
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;
/// Descriptors per proxied connection: the client's and the endpoint's.
pub const FDS_PER_CONNECTION: u64 = 2;

/// Descriptors weir keeps for itself with `workers` workers.
pub fn reserve(workers: usize) -> u64 {
    64 + 8 * workers as u64
}

/// The current `RLIMIT_NOFILE` (soft, hard).
pub fn nofile() -> io::Result<(u64, u64)> {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit into `r`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((r.rlim_cur, r.rlim_max))
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns (soft before, soft now).
pub fn raise_nofile() -> io::Result<(u64, u64)> {
    let (soft, hard) = nofile()?;
    if soft < hard {
        let r = libc::rlimit { rlim_cur: hard, rlim_max: hard };
        // SAFETY: setrlimit reads one rlimit; raising the soft limit up to the hard one needs no
        // privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok((soft, nofile()?.0))
}

/// How `max_connections` fits a descriptor limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdPlan {
    /// The descriptor limit planned for.
    pub limit: u64,
    /// Client connections across all workers.
    pub max_connections: u32,
    /// It was configured (not derived).
    pub configured: bool,
    /// Descriptors it needs: two per connection plus the reserve.
    pub needed: u64,
}

impl FdPlan {
    /// Whether the limit holds what `max_connections` needs.
    pub fn fits(&self) -> bool {
        self.needed <= self.limit
    }

    /// One line for `weir check` and the start log.
    pub fn summary(&self) -> String {
        format!(
            "descriptors: limit {}; max_connections {} ({}) needs {} × {FDS_PER_CONNECTION} + {} reserved = {}{}",
            self.limit,
            self.max_connections,
            if self.configured { "configured" } else { "derived from the limit" },
            self.max_connections,
            self.needed - u64::from(self.max_connections) * FDS_PER_CONNECTION,
            self.needed,
            if self.fits() {
                String::new()
            } else {
                format!(
                    " — more than the limit: past about {} connections, connects and accepts fail on weir's own limit (answered 503 overloaded); raise LimitNOFILE / the container's nofile limit, or lower max_connections",
                    self.limit.saturating_sub(self.needed - u64::from(self.max_connections) * FDS_PER_CONNECTION)
                        / FDS_PER_CONNECTION
                )
            }
        )
    }
}

/// `configured` (or the default that fits) against a descriptor `limit` with `workers` workers.
pub fn plan(configured: Option<u32>, workers: usize, limit: u64) -> FdPlan {
    let reserve = reserve(workers.max(1));
    let max_connections = configured.unwrap_or_else(|| {
        let fit = limit.saturating_sub(reserve) / FDS_PER_CONNECTION;
        fit.clamp(1, u64::from(DEFAULT_MAX_CONNECTIONS)) as u32
    });
    FdPlan {
        limit,
        max_connections,
        configured: configured.is_some(),
        needed: u64::from(max_connections) * FDS_PER_CONNECTION + reserve,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_fits_the_limit_and_a_configured_value_is_checked() {
        let p = plan(None, 2, 1 << 20);
        assert_eq!((p.max_connections, p.fits()), (DEFAULT_MAX_CONNECTIONS, true));
        let p = plan(None, 2, 256);
        assert_eq!(p.max_connections, (256 - 80) / 2);
        assert!(p.fits(), "{}", p.summary());
        let p = plan(Some(1000), 2, 256);
        assert!(!p.fits());
        assert!(p.summary().contains("past about 88 connections"), "{}", p.summary());
        assert_eq!(plan(None, 1, 10).max_connections, 1, "never 0");
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let (_, hard) = nofile().expect("getrlimit");
        let (_, now) = raise_nofile().expect("setrlimit");
        assert_eq!(now, hard);
    }
}
