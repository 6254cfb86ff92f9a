//! Single key presses while a command runs (`p` and `r` in `ferry submit`). The terminal goes
//! into non-canonical, no-echo mode so a key arrives without Enter; signals stay on, so Ctrl-C is
//! still Ctrl-C. The terminal's own settings come back when [`Keys`] is dropped.

use std::io::{IsTerminal, Read};

use nix::sys::termios::{LocalFlags, SetArg, SpecialCharacterIndices, Termios, tcgetattr, tcsetattr};
use nix::unistd::{getpgrp, tcgetpgrp};
use tokio::sync::mpsc;

pub struct Keys {
    presses: mpsc::Receiver<u8>,
    original: Termios,
}

impl Keys {
    /// Starts reading keys; `None` when stdin is not a terminal (piped, or a service), or is
    /// the terminal of a shell that runs this in the background (`ferry submit … &`): changing
    /// or reading that terminal would stop this process (SIGTTOU, SIGTTIN) until brought back.
    pub fn start() -> Option<Keys> {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() || matches!(tcgetpgrp(&stdin), Ok(foreground) if foreground != getpgrp()) {
            return None;
        }
        let original = tcgetattr(&stdin).ok()?;
        let mut keys = original.clone();
        keys.local_flags.remove(LocalFlags::ICANON | LocalFlags::ECHO);
        keys.control_chars[SpecialCharacterIndices::VMIN as usize] = 1;
        keys.control_chars[SpecialCharacterIndices::VTIME as usize] = 0;
        tcsetattr(&stdin, SetArg::TCSANOW, &keys).ok()?;
        let (tx, presses) = mpsc::channel(16);
        // A blocking read on its own thread: stdin is shared with the shell, so it must not be
        // made non-blocking. The thread ends with the process.
        std::thread::spawn(move || {
            let mut byte = [0u8];
            while let Ok(1) = std::io::stdin().read(&mut byte) {
                if tx.blocking_send(byte[0]).is_err() {
                    break;
                }
            }
        });
        Some(Keys { presses, original })
    }

    /// The next key pressed; `None` once stdin has closed.
    pub async fn next(&mut self) -> Option<u8> {
        self.presses.recv().await
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        let _ = tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.original);
    }
}
