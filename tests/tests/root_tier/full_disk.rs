//! Access-log shipping to a file on a full disk (root tier: it mounts a small tmpfs): only
//! whole lines reach the file, and the lines plus the drops they report add up to the requests.

use std::time::Duration;

use weir_tests::{Client, Endpoint, Weir, eventually};

use crate::data_path::service;
use crate::logging::{json_lines, logged_config};

/// A tmpfs of a given size, mounted for one test on a scratch directory; unmounted on drop.
struct Tmpfs {
    dir: std::path::PathBuf,
}

impl Tmpfs {
    fn mount(tag: &str, bytes: usize) -> Tmpfs {
        use std::os::unix::ffi::OsStrExt;
        weir_tests::root::require_root();
        let dir = weir_tests::scratch_dir(tag);
        let target = std::ffi::CString::new(dir.as_os_str().as_bytes()).expect("path");
        let data = std::ffi::CString::new(format!("size={bytes},mode=0755")).expect("options");
        // SAFETY: mount(2) with NUL-terminated strings that outlive the call.
        let rc = unsafe { libc::mount(c"tmpfs".as_ptr(), target.as_ptr(), c"tmpfs".as_ptr(), 0, data.as_ptr().cast()) };
        assert_eq!(rc, 0, "mounting a tmpfs on {}: {}", dir.display(), std::io::Error::last_os_error());
        Tmpfs { dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        use std::os::unix::ffi::OsStrExt;
        let target = std::ffi::CString::new(self.dir.as_os_str().as_bytes()).expect("path");
        // SAFETY: umount2(2) on the directory this test mounted.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

#[test]
fn a_full_disk_leaves_only_whole_lines_and_the_drop_count_adds_up() {
    let fs = Tmpfs::mount("fulldisk", 64 * 1024);
    // Leave 16 KiB free: about 45 lines fit, the rest of the first burst does not.
    let filler = fs.dir.join("filler");
    std::fs::write(&filler, vec![0u8; 48 * 1024]).expect("filler");
    let log = fs.dir.join("access.log");
    let ep = Endpoint::start("e");
    let weir = Weir::start(
        &logged_config(&format!("file:{}", log.display()), 64, &service("disk", "127.10.8.5:80", &[&ep], ""))
            .replace("workers = 2", "workers = 1"),
    );
    let mut c = Client::connect(weir.proxy);
    let mut sent = 0u64;
    for _ in 0..300 {
        assert_eq!(c.get("/fill", "disk").status, 200);
        sent += 1;
    }
    eventually(Duration::from_secs(10), "records dropped on the full disk", || {
        (weir.metric("weir_access_log_records_total{result=\"dropped\"}") > 0.0).then_some(())
    });
    // Space comes back.
    std::fs::remove_file(&filler).expect("free space");
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    eventually(Duration::from_secs(15), "a line written after space came back", || {
        assert_eq!(c.get("/after", "disk").status, 200);
        sent += 1;
        read().contains("\"/after\"").then_some(())
    });
    assert_eq!(c.get("/final", "disk").status, 200);
    sent += 1;
    eventually(Duration::from_secs(10), "the last request's line", || read().contains("\"/final\"").then_some(()));
    let text = read();
    let lines = json_lines(&text, &log.display().to_string());
    assert!(text.ends_with('\n'), "the file ends in a partial line");
    let dropped: u64 = lines.iter().filter_map(|v| v["dropped_before"].as_u64()).sum();
    assert!(dropped > 0, "no line reports the records lost while the disk was full");
    assert_eq!(
        lines.len() as u64 + dropped,
        sent,
        "{} lines + {dropped} reported dropped != {sent} requests",
        lines.len()
    );
    drop(weir);
}
