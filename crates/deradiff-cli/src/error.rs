//! The command's error: what failed, in the words of the command line, with the typed error
//! that caused it kept as its [`std::error::Error::source`], so that `main` can print the whole
//! chain ("error: …" then "  caused by: …" for each cause).

use std::error::Error as StdError;
use std::fmt;

/// Any error of the libraries (deradiff-sd, -core, -rewards, -tune, -analytic, candle, I/O), boxed.
pub(crate) type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Result alias of the command.
pub(crate) type Result<T, E = CliError> = std::result::Result<T, E>;

/// Whether the user gave a bad option (exit status 2, as clap's own usage errors) or a run
/// failed (exit status 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A bad option value or combination, found before anything was loaded or written.
    Usage,
    /// A failure while running: a checkpoint that does not load, a file that cannot be written.
    Runtime,
    /// Not a failure: a state the command reports with its own exit status (`status` while
    /// work items are missing).
    Status(u8),
}

/// An error of the command: a message (absent when the cause speaks for itself), the typed cause
/// and its [`Kind`].
#[derive(Debug)]
pub(crate) struct CliError {
    message: Option<String>,
    source: Option<BoxError>,
    kind: Kind,
}

impl CliError {
    /// A bad option (exit status 2).
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self { message: Some(message.into()), source: None, kind: Kind::Usage }
    }

    /// A bad option whose detail is a library's error (exit status 2).
    pub(crate) fn usage_because(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self { message: Some(message.into()), source: Some(source.into()), kind: Kind::Usage }
    }

    /// A bad option whose library error says it all (its message on top; exit status 2).
    pub(crate) fn usage_from(source: impl Into<BoxError>) -> Self {
        Self { message: None, source: Some(source.into()), kind: Kind::Usage }
    }

    /// A state reported with its own exit status `code` (`deradiff status` while a sweep is not
    /// complete), its message on stderr.
    pub(crate) fn incomplete(message: impl Into<String>, code: u8) -> Self {
        Self { message: Some(message.into()), source: None, kind: Kind::Status(code) }
    }

    /// A failure while running (exit status 1).
    pub(crate) fn runtime(message: impl Into<String>) -> Self {
        Self { message: Some(message.into()), source: None, kind: Kind::Runtime }
    }

    /// A failure while running, caused by `source` (exit status 1).
    pub(crate) fn because(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self { message: Some(message.into()), source: Some(source.into()), kind: Kind::Runtime }
    }

    /// A library's error as it is (its message on top, its own causes below; exit status 1).
    pub(crate) fn from_source(source: impl Into<BoxError>) -> Self {
        Self { message: None, source: Some(source.into()), kind: Kind::Runtime }
    }

    /// The process exit status: 2 for a bad option, 1 for a failed run, a state's own.
    pub(crate) fn exit_code(&self) -> u8 {
        match self.kind {
            Kind::Usage => 2,
            Kind::Runtime => 1,
            Kind::Status(code) => code,
        }
    }

    /// The message and every cause, one per line: `error: …` then `  caused by: …`. A cause
    /// whose text the line above already ends with (libraries often print their source inline)
    /// is not repeated.
    pub(crate) fn report(&self) -> String {
        // A reported state is no error: its message alone.
        let prefix = if matches!(self.kind, Kind::Status(_)) { "" } else { "error: " };
        let mut text = format!("{prefix}{self}");
        let mut last = self.to_string();
        let mut cause = StdError::source(self);
        while let Some(c) = cause {
            let line = c.to_string();
            if !line.is_empty() && !last.ends_with(&line) {
                text.push_str(&format!("\n  caused by: {line}"));
            }
            last = line;
            cause = c.source();
        }
        text
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.message, &self.source) {
            (Some(m), _) => f.write_str(m),
            (None, Some(s)) => write!(f, "{s}"),
            (None, None) => f.write_str("unknown error"),
        }
    }
}

impl StdError for CliError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        let source = self.source.as_deref().map(|s| s as &(dyn StdError + 'static));
        if self.message.is_some() {
            source
        } else {
            // Without a message of ours the cause is shown on top: continue with its own cause.
            source.and_then(StdError::source)
        }
    }
}

macro_rules! from_library_error {
    ($($t:ty),* $(,)?) => {$(
        impl From<$t> for CliError {
            fn from(e: $t) -> Self {
                CliError::from_source(e)
            }
        }
    )*};
}

from_library_error!(
    deradiff_sd::Error,
    deradiff_core::Error,
    deradiff_rewards::Error,
    deradiff_tune::Error,
    deradiff_analytic::Error,
    candle_core::Error,
    std::io::Error,
    serde_json::Error,
);

/// Adds the command's words to a library's error.
pub(crate) trait Context<T> {
    /// On error: `message` on top, the library's error as its cause (a runtime failure).
    fn context(self, message: impl Into<String>) -> Result<T>;
    /// Like [`Context::context`], with the message built only on error.
    fn with_context(self, message: impl FnOnce() -> String) -> Result<T>;
    /// On error: `message` on top, the library's error as its cause, as a bad option.
    fn usage_context(self, message: impl Into<String>) -> Result<T>;
}

impl<T, E: Into<BoxError>> Context<T> for std::result::Result<T, E> {
    fn context(self, message: impl Into<String>) -> Result<T> {
        self.map_err(|e| CliError::because(message, e))
    }

    fn with_context(self, message: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| CliError::because(message(), e))
    }

    fn usage_context(self, message: impl Into<String>) -> Result<T> {
        self.map_err(|e| CliError::usage_because(message, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Leaf;
    impl fmt::Display for Leaf {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("disk on fire")
        }
    }
    impl StdError for Leaf {}

    #[derive(Debug)]
    struct Middle(Leaf);
    impl fmt::Display for Middle {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("cannot write x.png")
        }
    }
    impl StdError for Middle {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn report_lists_every_cause() {
        let e = CliError::because("sampling failed", Middle(Leaf));
        assert_eq!(e.report(), "error: sampling failed\n  caused by: cannot write x.png\n  caused by: disk on fire");
        assert_eq!(e.exit_code(), 1);
    }

    #[test]
    fn a_bare_library_error_is_shown_once() {
        let e = CliError::from_source(Middle(Leaf));
        assert_eq!(e.report(), "error: cannot write x.png\n  caused by: disk on fire");
    }

    #[test]
    fn a_cause_printed_inline_is_not_repeated() {
        let io = std::io::Error::other("disk on fire");
        let e = CliError::because("cannot write x.png: disk on fire", io);
        assert_eq!(e.report(), "error: cannot write x.png: disk on fire");
    }

    #[test]
    fn usage_errors_exit_with_2() {
        let e = CliError::usage("--size 7x8: W and H must be multiples of 8");
        assert_eq!(e.exit_code(), 2);
        assert_eq!(e.report(), "error: --size 7x8: W and H must be multiples of 8");
    }
}
