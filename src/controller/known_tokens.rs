//! The tokens of pool servers this process knows, by pod UID: remembered when a server is made,
//! read from its Secret once after a restart (`cluster::tokens`), forgotten when it goes.

use std::collections::HashMap;
use std::sync::Mutex;

/// Tokens of pool servers, by pod UID.
#[derive(Default)]
pub struct KnownTokens {
    known: Mutex<HashMap<String, String>>,
}

impl KnownTokens {
    /// Remembers the token a server holds.
    pub fn remember(&self, uid: &str, token: String) {
        if let Ok(mut known) = self.known.lock() {
            known.insert(uid.into(), token);
        }
    }

    /// Forgets a removed server's token.
    pub fn forget(&self, uid: &str) {
        if let Ok(mut known) = self.known.lock() {
            known.remove(uid);
        }
    }

    /// The token of a server, if known.
    pub fn get(&self, uid: &str) -> Option<String> {
        self.known.lock().ok()?.get(uid).cloned()
    }
}
