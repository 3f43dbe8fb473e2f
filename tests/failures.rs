//! A worker that panics takes the whole process down, with a message, so
//! that its supervisor restarts it: no node keeps answering `/healthz`
//! while a share of its connections gets nothing. Needs the
//! `fault-injection` build (`./test.sh` enables it), which adds
//! `POST /debug/panic?worker=N`.

mod common;

use common::{connect, next_text, subscribe, Server};
use std::os::unix::process::ExitStatusExt;

#[tokio::test]
async fn a_worker_panic_ends_the_process_with_a_clear_message() {
    let server = Server::start_stderr(&["--workers", "2"]);
    let url = server.url("/ws");
    let mut client = connect(&url).await;
    subscribe(&mut client, "a").await;
    assert_eq!(server.publish("topic=a", "before").await, 1);
    assert_eq!(next_text(&mut client).await, "before");

    let (status, _) = server.post("/debug/panic?worker=1", "text/plain", "").await;
    assert_eq!(status, 202);
    server
        .wait_for_log(|l| {
            l.as_str()
                .is_some_and(|l| l.contains("ringcast-worker-1") && l.contains("panicked"))
        })
        .await;
    let status = server.exit_within(common::WAIT).await;
    assert!(!status.success(), "exit status {status:?}");
    assert_eq!(status.signal(), Some(libc::SIGABRT), "aborted: {status:?}");
}
