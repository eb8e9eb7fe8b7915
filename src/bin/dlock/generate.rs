//! `dlock man` and `dlock completions SHELL`: the manual pages and the shell completions,
//! generated from the same clap declaration as `dlock --help`, so that they cannot drift
//! from the command they describe.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use clap::Command;
use clap_complete::Shell;

/// Writes `dlock(1)` to `out`: the synopsis, the global options and the list of subcommands.
pub fn man_page(cmd: Command, out: &mut dyn Write) -> io::Result<()> {
    // `dlock help` is not listed: it has no page of its own (see `man_pages`).
    clap_mangen::Man::new(cmd.disable_help_subcommand(true)).render(out)
}

/// Writes one page per command into `dir` (`dlock.1`, `dlock-run.1`, `dlock-status.1`, ...)
/// and returns their paths.
pub fn man_pages(cmd: Command, dir: &Path) -> io::Result<Vec<PathBuf>> {
    fn write(cmd: Command, dir: &Path, written: &mut Vec<PathBuf>) -> io::Result<()> {
        written.push(clap_mangen::Man::new(cmd.clone()).generate_to(dir)?);
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            write(sub.clone(), dir, written)?;
        }
        Ok(())
    }
    // Building names each subcommand after its path (`dlock-run`): the page's file name.
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut written = Vec::new();
    write(cmd, dir, &mut written)?;
    Ok(written)
}

/// Writes the completion script for `shell` to `out`.
pub fn completions(shell: Shell, mut cmd: Command, out: &mut dyn Write) {
    clap_complete::generate(shell, &mut cmd, "dlock", out);
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, ValueEnum};

    use super::*;
    use crate::Cli;

    fn subcommands() -> Vec<String> {
        let names: Vec<String> = Cli::command()
            .get_subcommands()
            .map(|s| s.get_name().to_owned())
            .collect();
        for expected in ["run", "status", "completions", "man"] {
            assert!(
                names.iter().any(|n| n == expected),
                "dlock lost its `{expected}` subcommand: {names:?}"
            );
        }
        names
    }

    #[test]
    fn the_man_page_names_every_subcommand() {
        let mut page = Vec::new();
        man_page(Cli::command(), &mut page).expect("rendering into memory cannot fail");
        let page = String::from_utf8(page).expect("the man page is UTF-8");
        assert!(
            page.starts_with(".ie") || page.contains(".TH dlock 1"),
            "not a roff page: {page:.200}"
        );
        for sub in subcommands() {
            assert!(
                page.contains(&sub),
                "dlock(1) does not mention `{sub}`:\n{page}"
            );
        }
        for option in ["--redis", "--etcd", "--config", "--prefix", "--quiet"] {
            let roff = option.replace('-', "\\-");
            assert!(
                page.contains(&roff),
                "dlock(1) does not document {option}:\n{page}"
            );
        }
    }

    #[test]
    fn man_pages_are_written_for_every_subcommand_with_its_options() {
        let dir = std::env::temp_dir().join(format!("dlock-man-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let written = man_pages(Cli::command(), &dir).expect("writing the pages");
        let mut expected: Vec<_> = subcommands()
            .iter()
            .map(|s| format!("dlock-{s}.1"))
            .collect();
        expected.insert(0, "dlock.1".to_owned());
        let names: Vec<_> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names, expected,
            "one page per command, named after its path"
        );
        for path in &written {
            assert!(
                path.is_file(),
                "{} was announced but not written",
                path.display()
            );
        }
        let run = std::fs::read_to_string(dir.join("dlock-run.1")).expect("dlock-run.1");
        for option in [
            "\\-\\-wait",
            "\\-\\-no\\-wait",
            "\\-\\-ttl",
            "\\-\\-grace",
            "\\-\\-value",
            "\\-\\-permits",
        ] {
            assert!(
                run.contains(option),
                "dlock-run(1) does not document {option}:\n{run}"
            );
        }
        let status = std::fs::read_to_string(dir.join("dlock-status.1")).expect("dlock-status.1");
        assert!(
            status.contains("\\-\\-permits"),
            "dlock-status(1) does not document --permits:\n{status}"
        );
        std::fs::remove_dir_all(&dir).expect("removing the temporary directory");
    }

    #[test]
    fn completions_for_every_shell_name_every_subcommand() {
        let subs = subcommands();
        for shell in Shell::value_variants() {
            let mut script = Vec::new();
            completions(*shell, Cli::command(), &mut script);
            let script = String::from_utf8(script).expect("completion scripts are UTF-8");
            for sub in &subs {
                assert!(
                    script.contains(sub.as_str()),
                    "{shell} completions lack `{sub}`:\n{script}"
                );
            }
            assert!(
                script.contains("no-wait"),
                "{shell} completions lack run's --no-wait"
            );
        }
    }
}
