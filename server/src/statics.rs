//! Files the workers serve on the WebSocket listener: the JavaScript
//! client (`/ringcast.js`, always) and, with `--demo`, the demo page
//! (`/`), both embedded in the binary.

use bytes::Bytes;
use ringcast_engine::history::Rule;
use ringcast_engine::StaticFile;
use std::time::Duration;

/// The JavaScript client, `clients/js/ringcast.js`.
const CLIENT: &str = include_str!("../../clients/js/ringcast.js");

/// The demo page, `clients/js/demo/index.html`.
const DEMO: &str = include_str!("../../clients/js/demo/index.html");

/// Topics the demo uses: they keep history, so a page that reconnects
/// misses nothing.
pub const DEMO_TOPICS: &str = "demo.*";

/// The topic the demo page chats on: clients may publish to it.
pub const DEMO_CHAT: &str = "demo.chat";

/// The `--client-publish` patterns in effect: `configured`, and with
/// `demo`, the demo's chat topic.
pub fn client_publish(demo: bool, configured: &[String]) -> Vec<String> {
    let mut patterns = configured.to_vec();
    if demo {
        patterns.push(DEMO_CHAT.into());
    }
    patterns
}

/// The presence patterns: `configured`, plus the demo's topics with
/// `demo` (its page lists who is in the chat).
pub fn presence(demo: bool, configured: &[String]) -> Vec<String> {
    let mut patterns = configured.to_vec();
    if demo {
        patterns.push(DEMO_TOPICS.into());
    }
    patterns
}

/// The files to serve: `/ringcast.js`, and `/` with `demo`.
pub fn files(demo: bool) -> Vec<StaticFile> {
    let mut files = vec![StaticFile {
        path: "/ringcast.js".into(),
        content_type: "text/javascript; charset=utf-8",
        body: Bytes::from_static(CLIENT.as_bytes()),
    }];
    if demo {
        files.push(StaticFile {
            path: "/".into(),
            content_type: "text/html; charset=utf-8",
            body: Bytes::from_static(DEMO.as_bytes()),
        });
    }
    files
}

/// The history rules in effect: `configured`, and with `demo`, 200
/// messages for 10 minutes on `demo.*` after them.
pub fn history(demo: bool, configured: &[Rule]) -> Vec<Rule> {
    let mut rules = configured.to_vec();
    if demo {
        rules.push(Rule {
            pattern: DEMO_TOPICS.into(),
            size: 200,
            ttl: Duration::from_secs(600),
        });
    }
    rules
}
