//! Access-log records: a fixed-size, heap-free value a worker fills per request and pushes into
//! its bounded ring, and the JSON line the shipper makes of it. Owns the record's fields and
//! their bounds (long paths are truncated, never allocated) and the line format. Must not:
//! allocate when a record is built, or block: the ring and the shipper live elsewhere.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use crate::outcome::ErrorReason;

/// Longest path kept in a record; longer ones are truncated and marked. (156 keeps a record at
/// 512 bytes beside its route, backend, caller and a discovered service's name.)
pub const PATH_BYTES: usize = 156;
/// Longest authority (Host) kept.
pub const AUTHORITY_BYTES: usize = 64;
/// Longest service name kept: a file service's name is at most 63 bytes; a discovered one is
/// `NAME.NAMESPACE:PORTNAME`, at most 63 + 1 + 63 + 1 + 15 = 143 bytes (Kubernetes' limits),
/// so that none is cut.
pub const SERVICE_BYTES: usize = 143;
/// Longest method kept.
pub const METHOD_BYTES: usize = 16;
/// Longest caller workload name kept (`namespace/owner`, a systemd unit, a cgroup path).
pub const SOURCE_BYTES: usize = 64;
/// `source_workload` of a connection weir did not steer (dialled to its listener directly).
pub const SOURCE_DIRECT: &str = "direct";

/// A bounded inline string (`N` < 32 768).
#[derive(Clone, Copy)]
pub struct InlineStr<const N: usize> {
    /// Bytes kept, with [`TRUNCATED`] set when the original was longer: one field for both
    /// keeps a record within its 512 bytes. Kept as bytes, so that the string is aligned to
    /// one byte and an odd `N` costs no padding.
    len: [u8; 2],
    bytes: [u8; N],
}

/// The bit of [`InlineStr`]'s length that says it was cut.
const TRUNCATED: u16 = 1 << 15;

impl<const N: usize> InlineStr<N> {
    const FITS: () = assert!(N < TRUNCATED as usize, "the length and the truncated bit share a u16");

    /// Copies at most `N` bytes of `s`.
    pub fn new(s: &[u8]) -> Self {
        let () = Self::FITS;
        let mut out = InlineStr { len: [0; 2], bytes: [0; N] };
        let n = s.len().min(N);
        out.bytes[..n].copy_from_slice(&s[..n]);
        out.len = (n as u16 | if s.len() > N { TRUNCATED } else { 0 }).to_ne_bytes();
        out
    }

    fn len_field(&self) -> u16 {
        u16::from_ne_bytes(self.len)
    }

    /// The kept bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len_field() & !TRUNCATED)]
    }

    /// Whether the original was longer than `N`.
    pub fn truncated(&self) -> bool {
        self.len_field() & TRUNCATED != 0
    }
}

impl<const N: usize> Default for InlineStr<N> {
    fn default() -> Self {
        InlineStr { len: [0; 2], bytes: [0; N] }
    }
}

impl<const N: usize> std::fmt::Debug for InlineStr<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

/// One request (or TCP connection), as the access log reports it.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogRecord {
    /// Start time, microseconds since the Unix epoch.
    pub start_unix_us: u64,
    /// Service name (empty when unrouted).
    pub service: InlineStr<SERVICE_BYTES>,
    /// Endpoint of the last attempt.
    pub endpoint: Option<SocketAddr>,
    /// Client address.
    pub client: Option<SocketAddr>,
    /// Request method (empty for TCP).
    pub method: InlineStr<METHOD_BYTES>,
    /// Host / authority.
    pub authority: InlineStr<AUTHORITY_BYTES>,
    /// Request target, truncated at [`PATH_BYTES`].
    pub path: InlineStr<PATH_BYTES>,
    /// Status sent to the client (0 = none).
    pub status: u16,
    /// Why weir answered itself (the `x-weir-error` value).
    pub error: Option<ErrorReason>,
    /// Attempts made (0 when none was).
    pub attempts: u8,
    /// Bytes received from the client (body).
    pub bytes_in: u64,
    /// Bytes sent to the client (body).
    pub bytes_out: u64,
    /// Total duration, microseconds.
    pub duration_us: u64,
    /// Time from the last attempt's start to its response head, microseconds (0 = none).
    pub upstream_us: u64,
    /// Worker that served it.
    pub worker: u16,
    /// What the client spoke.
    pub protocol: LogProtocol,
    /// gRPC: the call's final `grpc-status`.
    pub grpc_status: Option<u8>,
    /// The route taken (its index in the service's routes); [`NO_ID`] for a service without
    /// routes, a TCP connection, or a request refused before routing. (Not an `Option`: the
    /// record would outgrow its 512 bytes; a derived `Default` is 0, so set it.)
    pub route: u16,
    /// The backend chosen, as its id in [`Names`]; [`NO_ID`] as for `route`.
    pub backend: u16,
    /// The caller's cgroup v2 id; 0 for a connection weir did not steer ([`SOURCE_DIRECT`]).
    /// (Its workload's name is looked up when the line is written, so that the record stays
    /// small: see [`LineNames`].)
    pub source_cgroup_id: u64,
}

/// A record's `route` or `backend` when there is none.
pub const NO_ID: u16 = u16::MAX;

/// Names by id, and ids by name.
type NameTable = (Vec<Arc<str>>, HashMap<Arc<str>, u16>);

/// Backend names by id: records carry the id (two bytes instead of a name), the shipper writes
/// the name. Append-only, so an id means the same name whatever reloads come between a record
/// and its line. Names are added when a snapshot is built (never on the request path) and read
/// by the log shipper; at most 65 535 distinct names, later ones have no id.
#[derive(Debug, Default)]
pub struct Names {
    inner: RwLock<NameTable>,
}

impl Names {
    /// The id of `name`, given it now if it has none.
    pub fn id(&self, name: &str) -> u16 {
        let mut guard = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let (by_id, ids) = &mut *guard;
        if let Some(&id) = ids.get(name) {
            return id;
        }
        let id = match u16::try_from(by_id.len()) {
            Ok(id) if id != NO_ID => id,
            _ => return NO_ID,
        };
        let name: Arc<str> = Arc::from(name);
        by_id.push(name.clone());
        ids.insert(name, id);
        id
    }

    /// The name with `id`.
    pub fn get(&self, id: u16) -> Option<Arc<str>> {
        let guard = self.inner.read().unwrap_or_else(|e| e.into_inner());
        guard.0.get(usize::from(id)).cloned()
    }
}

/// The names a line gives to what its record holds as ids, looked up by the shipper when it
/// writes the line (never on a worker): `None` writes `null`.
#[derive(Debug, Clone, Copy, Default)]
pub struct LineNames<'a> {
    /// The name of the record's `backend` id (from [`Names`]).
    pub backend: Option<&'a str>,
    /// The workload of the record's steered caller (`source_cgroup_id`); a direct caller is
    /// written as [`SOURCE_DIRECT`] whatever this is.
    pub source_workload: Option<&'a str>,
}

/// What a client spoke, as the access log names it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(u8)]
pub enum LogProtocol {
    /// HTTP/1.x (`http`).
    #[default]
    Http,
    /// HTTP/2 (`http2`).
    Http2,
    /// A TCP relay (`tcp`).
    Tcp,
}

impl LogProtocol {
    /// The JSON value.
    pub const fn as_str(self) -> &'static str {
        match self {
            LogProtocol::Http => "http",
            LogProtocol::Http2 => "http2",
            LogProtocol::Tcp => "tcp",
        }
    }
}

// A record is what each ring slot holds, committed at start: its size is the memory budget's.
// The docs (OPERATING.md's memory formula, the DaemonSet's comments) quote this size.
const _: () = assert!(std::mem::size_of::<LogRecord>() == 512);

fn json_str(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    for &b in s {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..=0x1f | 0x7f..=0xff => {
                let _ = write!(out, "\\u{:04x}", b);
            }
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

impl LogRecord {
    /// Appends this record as one JSON line (NDJSON). `dropped_before` is the number of records
    /// of the same worker dropped since the previous line was shipped; it appears only when
    /// non-zero, so a consumer sees exactly where the gap was. `names` are what the record
    /// holds as ids: its backend's name and its steered caller's workload.
    pub fn write_json(&self, dropped_before: u64, names: LineNames<'_>, out: &mut Vec<u8>) {
        let LineNames { backend, source_workload } = names;
        let secs = self.start_unix_us / 1_000_000;
        let micros = self.start_unix_us % 1_000_000;
        let (date, time) = civil_from_unix(secs);
        let _ = write!(out, "{{\"timestamp\":\"{date}T{time}.{micros:06}Z\",\"service\":");
        json_str(out, self.service.as_bytes());
        out.extend_from_slice(b",\"endpoint\":");
        match self.endpoint {
            Some(e) => json_str(out, e.to_string().as_bytes()),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"client\":");
        match self.client {
            Some(e) => json_str(out, e.to_string().as_bytes()),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"protocol\":");
        json_str(out, self.protocol.as_str().as_bytes());
        out.extend_from_slice(b",\"method\":");
        json_str(out, self.method.as_bytes());
        out.extend_from_slice(b",\"authority\":");
        json_str(out, self.authority.as_bytes());
        out.extend_from_slice(b",\"path\":");
        json_str(out, self.path.as_bytes());
        if self.path.truncated() {
            out.extend_from_slice(b",\"path_truncated\":true");
        }
        let _ = write!(out, ",\"status\":{}", self.status);
        out.extend_from_slice(b",\"error\":");
        match self.error {
            Some(e) => json_str(out, e.as_str().as_bytes()),
            None => out.extend_from_slice(b"null"),
        }
        let _ = write!(
            out,
            ",\"attempts\":{},\"bytes_in\":{},\"bytes_out\":{},\"duration_ms\":{:.3},\"upstream_ms\":{:.3},\"worker\":{}",
            self.attempts,
            self.bytes_in,
            self.bytes_out,
            self.duration_us as f64 / 1000.0,
            self.upstream_us as f64 / 1000.0,
            self.worker
        );
        if let Some(code) = self.grpc_status {
            let _ = write!(out, ",\"grpc_status\":{code}");
        }
        match self.route {
            NO_ID => out.extend_from_slice(b",\"route\":null"),
            r => {
                let _ = write!(out, ",\"route\":{r}");
            }
        }
        out.extend_from_slice(b",\"backend\":");
        match backend.filter(|_| self.backend != NO_ID) {
            Some(b) => json_str(out, b.as_bytes()),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"source_workload\":");
        match (self.source_cgroup_id, source_workload) {
            (0, _) => json_str(out, SOURCE_DIRECT.as_bytes()),
            (_, Some(w)) => json_str(out, w.as_bytes()),
            (_, None) => out.extend_from_slice(b"null"),
        }
        match self.source_cgroup_id {
            0 => out.extend_from_slice(b",\"source_cgroup_id\":null"),
            id => {
                let _ = write!(out, ",\"source_cgroup_id\":{id}");
            }
        }
        if dropped_before > 0 {
            let _ = write!(out, ",\"dropped_before\":{dropped_before}");
        }
        out.extend_from_slice(b"}\n");
    }
}

/// `YYYY-MM-DD` and `HH:MM:SS` (UTC) of a Unix time, by Howard Hinnant's civil-from-days.
fn civil_from_unix(secs: u64) -> (String, String) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    (format!("{y:04}-{m:02}-{d:02}"), format!("{:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> LogRecord {
        LogRecord {
            start_unix_us: 1_764_000_000_123_456,
            service: InlineStr::new(b"checkout"),
            endpoint: Some("127.0.0.1:18081".parse().expect("addr")),
            client: Some("127.0.0.1:40000".parse().expect("addr")),
            method: InlineStr::new(b"GET"),
            authority: InlineStr::new(b"checkout"),
            path: InlineStr::new(b"/cart?id=\"7\""),
            status: 503,
            error: Some(ErrorReason::ConnectFailure),
            attempts: 3,
            bytes_in: 0,
            bytes_out: 52,
            duration_us: 1500,
            upstream_us: 0,
            worker: 1,
            protocol: LogProtocol::Http,
            grpc_status: None,
            route: NO_ID,
            backend: NO_ID,
            source_cgroup_id: 4242,
        }
    }

    #[test]
    fn a_record_stays_512_bytes() {
        // The memory budget and docs/OPERATING.md count rings in these.
        assert_eq!(std::mem::size_of::<LogRecord>(), 512);
    }

    #[test]
    fn json_line_is_valid_and_complete() {
        let mut out = Vec::new();
        record().write_json(0, LineNames { backend: None, source_workload: Some("shop/web") }, &mut out);
        assert_eq!(out.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
        assert_eq!(v["timestamp"], "2025-11-24T16:00:00.123456Z");
        assert_eq!(v["service"], "checkout");
        assert_eq!(v["path"], "/cart?id=\"7\"");
        assert_eq!(v["status"], 503);
        assert_eq!(v["error"], "connect-failure");
        assert_eq!(v["attempts"], 3);
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!((v["source_workload"].as_str(), v["source_cgroup_id"].as_u64()), (Some("shop/web"), Some(4242)));
        assert!(v.get("dropped_before").is_none());
        assert!(v["route"].is_null() && v["backend"].is_null());
    }

    #[test]
    fn route_and_backend_are_an_index_and_a_name() {
        let names = Names::default();
        let (stable, canary) = (names.id("stable"), names.id("canary"));
        assert_eq!((names.id("stable"), names.get(canary).as_deref()), (stable, Some("canary")));
        let r = LogRecord { route: 1, backend: canary, ..record() };
        let mut out = Vec::new();
        let backend = names.get(r.backend);
        r.write_json(0, LineNames { backend: backend.as_deref(), source_workload: None }, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
        assert_eq!((v["route"].as_u64(), v["backend"].as_str()), (Some(1), Some("canary")));
    }

    #[test]
    fn direct_and_unresolved_callers() {
        let mut r = record();
        r.source_cgroup_id = 0;
        let mut out = Vec::new();
        r.write_json(0, LineNames { backend: None, source_workload: Some("ignored") }, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
        assert_eq!((v["source_workload"].as_str(), v["source_cgroup_id"].is_null()), (Some("direct"), true));
        r.source_cgroup_id = 7;
        out.clear();
        r.write_json(0, LineNames::default(), &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
        assert_eq!((v["source_workload"].is_null(), v["source_cgroup_id"].as_u64()), (true, Some(7)));
    }

    #[test]
    fn gap_count_appears_only_when_records_were_dropped() {
        let mut out = Vec::new();
        record().write_json(42, LineNames::default(), &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
        assert_eq!(v["dropped_before"], 42);
    }

    #[test]
    fn long_paths_are_truncated_and_marked_and_control_bytes_escaped() {
        let long = vec![b'a'; PATH_BYTES + 10];
        let mut r = record();
        r.path = InlineStr::new(&long);
        r.authority = InlineStr::new(b"ev\x01il\xff");
        let mut out = Vec::new();
        r.write_json(0, LineNames::default(), &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
        assert_eq!(v["path"].as_str().map(str::len), Some(PATH_BYTES));
        assert_eq!(v["path_truncated"], true);
        assert_eq!(v["authority"], "ev\u{1}il\u{ff}");
    }

    #[test]
    fn the_longest_discovered_service_name_is_kept_whole() {
        // NAME.NAMESPACE:PORTNAME at Kubernetes' limits (63, 63 and 15 characters).
        let name = format!("{}.{}:{}", "n".repeat(63), "s".repeat(63), "p".repeat(15));
        let mut r = record();
        r.service = InlineStr::new(name.as_bytes());
        assert!(!r.service.truncated());
        let mut out = Vec::new();
        r.write_json(0, LineNames { backend: None, source_workload: Some("shop/web") }, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
        assert_eq!(v["service"].as_str(), Some(name.as_str()));
        // Beside the caller's fields, in the same 512-byte record.
        assert_eq!((v["source_workload"].as_str(), v["source_cgroup_id"].as_u64()), (Some("shop/web"), Some(4242)));
        // One byte more than Kubernetes allows would be cut (and said so).
        let longer = format!("{name}x");
        assert!(InlineStr::<SERVICE_BYTES>::new(longer.as_bytes()).truncated());
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_unix(0), ("1970-01-01".into(), "00:00:00".into()));
        assert_eq!(civil_from_unix(951_782_400), ("2000-02-29".into(), "00:00:00".into()));
    }
}
