//! Draws the guide's two timelines as SVG files:
//!
//! - `lifecycle.svg`: a guard's life: acquired, renewed every TTL/3, released; and, when
//!   renewals stop being confirmed, `lost()` at the safety deadline (0.9 × TTL after the
//!   send time of the last confirmed renewal), before the server's expiry.
//! - `failure.svg`: the renewal is cut, `lost()` fires, the server expires the key, a rival
//!   acquires with a larger fencing token, and the fenced store refuses the stale write.
//!
//! ```sh
//! cargo run -p dlock-pictures            # writes docs/pictures/*.svg
//! cargo run -p dlock-pictures -- DIR     # somewhere else
//! ```
//!
//! The times are computed from the same rules the crate follows (renewal every TTL/3, the
//! deadline at 90 % of the TTL), not placed by hand. The output is embedded in the guide
//! (`src/guide/`, with `include_str!`) and linked from the README, so it keeps to what both
//! can show: one `<svg>` element whose first line is the whole opening tag, no blank line (a
//! blank line would end rustdoc's HTML block), no ids (two pictures share one docs page),
//! and a white background that stays legible under rustdoc's dark themes.

use std::fmt::Write as _;
use std::path::PathBuf;

/// The TTL both pictures use, in seconds.
const TTL: f64 = 10.0;
/// A renewal is due every TTL/3.
const RENEW_EVERY: f64 = TTL / 3.0;
/// `lost()` fires this long after the send time of the last confirmed renewal.
const SAFETY_DEADLINE: f64 = 0.9 * TTL;

const BLUE: &str = "#1f5fa8";
const ORANGE: &str = "#c05600";
const RED: &str = "#b00020";
const GREEN: &str = "#1b7f3b";
const GREY: &str = "#666666";
const INK: &str = "#1a1a1a";

/// An SVG canvas with a time axis: `x(t)` maps seconds to pixels.
struct Canvas {
    width: f64,
    height: f64,
    left: f64,
    right: f64,
    span: f64,
    body: String,
}

impl Canvas {
    fn new(width: f64, height: f64, span: f64) -> Canvas {
        Canvas {
            width,
            height,
            left: 170.0,
            right: width - 30.0,
            span,
            body: String::new(),
        }
    }

    fn x(&self, t: f64) -> f64 {
        self.left + (self.right - self.left) * t / self.span
    }

    fn line(
        &mut self,
        (x1, y1): (f64, f64),
        (x2, y2): (f64, f64),
        color: &str,
        width: f64,
        dashed: bool,
    ) {
        let dash = if dashed {
            r#" stroke-dasharray="5 4""#
        } else {
            ""
        };
        writeln!(
            self.body,
            r#"<line x1="{x1:.1}" y1="{y1:.1}" x2="{x2:.1}" y2="{y2:.1}" stroke="{color}" stroke-width="{width}"{dash}/>"#
        )
        .unwrap();
    }

    /// A line with an arrowhead at its end (a polygon: markers would need ids).
    fn arrow(&mut self, from: (f64, f64), to: (f64, f64), color: &str, dashed: bool) {
        self.line(from, to, color, 1.5, dashed);
        let (dx, dy) = (to.0 - from.0, to.1 - from.1);
        let len = (dx * dx + dy * dy).sqrt();
        let (ux, uy) = (dx / len, dy / len);
        let (bx, by) = (to.0 - 8.0 * ux, to.1 - 8.0 * uy);
        let (px, py) = (-uy * 4.0, ux * 4.0);
        writeln!(
            self.body,
            r#"<polygon points="{:.1},{:.1} {:.1},{:.1} {:.1},{:.1}" fill="{color}"/>"#,
            to.0,
            to.1,
            bx + px,
            by + py,
            bx - px,
            by - py
        )
        .unwrap();
    }

    fn rect(&mut self, (x, y): (f64, f64), (w, h): (f64, f64), fill: &str, opacity: f64) {
        writeln!(
            self.body,
            r#"<rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}" fill="{fill}" fill-opacity="{opacity}" rx="3"/>"#
        )
        .unwrap();
    }

    fn circle(&mut self, (x, y): (f64, f64), r: f64, color: &str, filled: bool) {
        let fill = if filled { color } else { "#ffffff" };
        writeln!(
            self.body,
            r#"<circle cx="{x:.1}" cy="{y:.1}" r="{r}" fill="{fill}" stroke="{color}" stroke-width="1.5"/>"#
        )
        .unwrap();
    }

    /// Text anchored at `anchor` ("start", "middle", "end").
    fn text(
        &mut self,
        (x, y): (f64, f64),
        text: &str,
        color: &str,
        size: f64,
        anchor: &str,
        bold: bool,
    ) {
        let weight = if bold { r#" font-weight="bold""# } else { "" };
        writeln!(
            self.body,
            r#"<text x="{x:.1}" y="{y:.1}" fill="{color}" font-size="{size}" text-anchor="{anchor}"{weight}>{}</text>"#,
            escape(text)
        )
        .unwrap();
    }

    /// A lane: its name on the left and a thin line across the time axis.
    fn lane(&mut self, y: f64, name: &str, color: &str) {
        self.text((self.left - 12.0, y + 4.0), name, color, 13.0, "end", true);
        let (from, to) = ((self.left, y), (self.right, y));
        self.line(from, to, "#cccccc", 1.0, false);
    }

    /// The time axis at `y`, a tick every `every` seconds, labelled in seconds.
    fn axis(&mut self, y: f64, every: f64) {
        self.line((self.left, y), (self.right, y), GREY, 1.0, false);
        let mut t = 0.0;
        while t <= self.span + 1e-9 {
            let x = self.x(t);
            self.line((x, y), (x, y + 4.0), GREY, 1.0, false);
            self.text(
                (x, y + 16.0),
                &format!("{t:.0} s"),
                GREY,
                11.0,
                "middle",
                false,
            );
            t += every;
        }
    }

    /// A dashed vertical marker from `top` to `bottom` at time `t`, labelled at the top
    /// (`below`: at the bottom), the label's `anchor` at the line.
    fn marker(
        &mut self,
        t: f64,
        (top, bottom): (f64, f64),
        label: &str,
        color: &str,
        anchor: &str,
        below: bool,
    ) {
        let x = self.x(t);
        self.line((x, top), (x, bottom), color, 1.2, true);
        let y = if below { bottom + 13.0 } else { top - 5.0 };
        let x = match anchor {
            "start" => x + 3.0,
            "end" => x - 3.0,
            _ => x,
        };
        self.text((x, y), label, color, 11.5, anchor, true);
    }

    /// A renewal at `t` on the lane at `y`: a filled dot when the server confirmed it, a
    /// hollow one with a cross when it went unanswered.
    /// The grant at time 0 on the lane at `y`: a dot and its label.
    fn acquired(&mut self, y: f64, label: &str, color: &str) {
        let x = self.x(0.0);
        self.circle((x, y), 6.0, color, true);
        self.text((x + 8.0, y + 18.0), label, color, 11.5, "start", false);
    }

    fn renewal(&mut self, t: f64, y: f64, confirmed: bool, color: &str) {
        let x = self.x(t);
        if confirmed {
            self.circle((x, y), 5.0, color, true);
            self.text((x, y - 10.0), "renew ✓", color, 11.0, "middle", false);
        } else {
            self.circle((x, y), 5.0, RED, false);
            self.line((x - 3.5, y - 3.5), (x + 3.5, y + 3.5), RED, 1.5, false);
            self.line((x - 3.5, y + 3.5), (x + 3.5, y - 3.5), RED, 1.5, false);
            self.text((x, y - 10.0), "no reply", RED, 11.0, "middle", false);
        }
    }

    fn finish(self, title: &str, caption: &[&str]) -> String {
        let (w, h) = (self.width, self.height);
        let mut svg = String::new();
        // The whole opening tag on the first line: rustdoc's markdown starts an HTML block there.
        writeln!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w:.0}" height="{h:.0}" viewBox="0 0 {w:.0} {h:.0}" style="max-width:100%;height:auto" font-family="Helvetica, Arial, sans-serif" role="img" aria-label="{}">"#,
            escape(title)
        )
        .unwrap();
        writeln!(svg, "<title>{}</title>", escape(title)).unwrap();
        writeln!(
            svg,
            r##"<rect width="{w:.0}" height="{h:.0}" fill="#ffffff" rx="6"/>"##
        )
        .unwrap();
        writeln!(
            svg,
            r#"<text x="20" y="28" fill="{INK}" font-size="16" font-weight="bold">{}</text>"#,
            escape(title)
        )
        .unwrap();
        svg.push_str(&self.body);
        let mut y = h - 14.0 - 16.0 * (caption.len() as f64 - 1.0);
        for line in caption {
            writeln!(
                svg,
                r#"<text x="20" y="{y:.1}" fill="{GREY}" font-size="12">{}</text>"#,
                escape(line)
            )
            .unwrap();
            y += 16.0;
        }
        svg.push_str("</svg>\n");
        debug_assert!(
            !svg.contains("\n\n"),
            "a blank line would end rustdoc's HTML block"
        );
        svg
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A guard's life, twice: renewals confirmed until `release()`; renewals unanswered from
/// the second one on, so `lost()` fires at the safety deadline, before the server's expiry.
fn lifecycle() -> String {
    let mut c = Canvas::new(900.0, 420.0, 15.0);
    let release_at = 11.5;

    // Upper pair of lanes: the good case.
    let (guard, server) = (85.0, 130.0);
    c.lane(guard, "guard", BLUE);
    c.lane(server, "key on the server", GREY);
    c.acquired(guard, "lock() → guard, fencing token 7", BLUE);
    let mut t = RENEW_EVERY;
    while t < release_at {
        c.renewal(t, guard, true, BLUE);
        t += RENEW_EVERY;
    }
    // The key lives from the grant until the release deletes it; each confirmed renewal
    // moves its expiry to that renewal's send time + TTL.
    c.rect(
        (c.x(0.0), server - 7.0),
        (c.x(release_at) - c.x(0.0), 14.0),
        BLUE,
        0.25,
    );
    c.text(
        (c.x(0.3), server + 4.0),
        "held: each confirmed renewal sets expiry = send time + TTL",
        INK,
        11.0,
        "start",
        false,
    );
    let x = c.x(release_at);
    c.arrow((x, guard + 6.0), (x, server - 8.0), BLUE, false);
    c.text(
        (x + 6.0, guard - 10.0),
        "release(): key deleted",
        BLUE,
        11.5,
        "start",
        true,
    );

    // Lower pair: renewals stop being confirmed after the first one.
    let (guard, server) = (235.0, 280.0);
    c.lane(guard, "guard", BLUE);
    c.lane(server, "key on the server", GREY);
    c.acquired(guard, "lock() → guard", BLUE);
    let last_confirmed = RENEW_EVERY;
    c.renewal(last_confirmed, guard, true, BLUE);
    let deadline = last_confirmed + SAFETY_DEADLINE;
    let expiry = last_confirmed + TTL;
    let mut t = 2.0 * RENEW_EVERY;
    while t < deadline {
        c.renewal(t, guard, false, BLUE);
        t += RENEW_EVERY;
    }
    c.text(
        (c.x(7.0), guard + 20.0),
        "retried until the deadline",
        RED,
        11.0,
        "start",
        false,
    );
    c.rect(
        (c.x(0.0), server - 7.0),
        (c.x(expiry) - c.x(0.0), 14.0),
        BLUE,
        0.25,
    );
    c.text(
        (c.x(0.3), server + 4.0),
        "alive on the server until the last confirmed send + TTL",
        INK,
        11.0,
        "start",
        false,
    );
    c.marker(
        deadline,
        (guard - 28.0, server + 16.0),
        "lost() fires",
        RED,
        "middle",
        false,
    );
    c.marker(
        expiry,
        (server - 22.0, server + 16.0),
        "server expiry",
        GREY,
        "start",
        false,
    );
    // The margin between the two.
    let (xd, xe) = (c.x(deadline), c.x(expiry));
    c.line((xd, server + 22.0), (xe, server + 22.0), RED, 1.0, false);
    c.text(
        ((xd + xe) / 2.0, server + 36.0),
        "0.1 × TTL margin",
        RED,
        11.0,
        "middle",
        false,
    );
    let xl = c.x(last_confirmed);
    c.line((xl, server + 10.0), (xl, server + 48.0), BLUE, 1.0, true);
    c.arrow((xl, server + 44.0), (xd, server + 44.0), BLUE, false);
    c.text(
        ((xl + xd) / 2.0, server + 58.0),
        "0.9 × TTL after the last confirmed renewal was sent",
        BLUE,
        11.0,
        "middle",
        false,
    );

    c.axis(355.0, 1.0);
    c.finish(
        &format!("A guard's life (TTL {TTL:.0} s: renewal every TTL/3 = {RENEW_EVERY:.1} s)"),
        &[
            "Top: every renewal confirmed, then released. Bottom: renewals unanswered from the second on;",
            "lost() fires 0.9 × TTL after the last confirmed renewal was sent, before the server can expire the key.",
        ],
    )
}

/// The timeline that matters: a cut renewal, `lost()`, the server's expiry, a rival's
/// larger fencing token, and the stale write it makes the store refuse.
fn failure() -> String {
    let mut c = Canvas::new(900.0, 470.0, 20.0);
    let (a, server, b, store) = (85.0, 175.0, 265.0, 355.0);
    c.lane(a, "holder A", BLUE);
    c.lane(server, "lock server", GREY);
    c.lane(b, "holder B", ORANGE);
    c.lane(store, "fenced store", INK);

    // A acquires with token 41 and renews once.
    c.acquired(a, "acquires, token 41", BLUE);
    let last_confirmed = RENEW_EVERY;
    c.renewal(last_confirmed, a, true, BLUE);
    // A's first write: accepted, the store's highest token is now 41.
    let x = c.x(4.3);
    c.arrow((x, a + 6.0), (x, store - 8.0), BLUE, false);
    c.text(
        (x + 5.0, store - 14.0),
        "write(41) ✓",
        GREEN,
        11.5,
        "start",
        true,
    );

    // The cut: A's renewals go unanswered from here on.
    let cut = 5.0;
    c.rect(
        (c.x(cut), a - 24.0),
        (c.x(20.0) - c.x(cut), 48.0),
        RED,
        0.07,
    );
    c.text(
        (c.x(cut) + 4.0, a - 28.0),
        "network cut (or A paused)",
        RED,
        11.5,
        "start",
        true,
    );
    let deadline = last_confirmed + SAFETY_DEADLINE;
    let expiry = last_confirmed + TTL;
    let mut t = 2.0 * RENEW_EVERY;
    while t < deadline {
        c.renewal(t, a, false, BLUE);
        t += RENEW_EVERY;
    }

    // A write that left A before lost() fired, held up on the way (a slow link, a pause).
    let (sent, arrives) = (12.0, 17.6);
    c.arrow(
        (c.x(sent), a + 6.0),
        (c.x(arrives), store - 8.0),
        BLUE,
        true,
    );
    c.text(
        (c.x(sent) - 6.0, a + 40.0),
        "write(41) already on its way",
        BLUE,
        11.0,
        "end",
        false,
    );

    c.marker(
        deadline,
        (a - 42.0, a + 28.0),
        "lost() fires: A stops",
        RED,
        "middle",
        false,
    );

    // The server holds A's key until the last confirmed renewal's send time + TTL.
    c.rect(
        (c.x(0.0), server - 8.0),
        (c.x(expiry) - c.x(0.0), 16.0),
        BLUE,
        0.25,
    );
    c.text(
        (c.x(0.3), server + 4.0),
        "A's key, token 41",
        BLUE,
        11.0,
        "start",
        false,
    );
    c.marker(
        expiry,
        (server - 14.0, server + 14.0),
        "A's key expires",
        GREY,
        "end",
        true,
    );

    // B waits, then acquires with a larger token.
    let granted = expiry + 0.15;
    c.line((c.x(5.0), b), (c.x(granted), b), ORANGE, 2.0, true);
    c.text(
        (c.x(5.2), b - 8.0),
        "lock() waiting",
        ORANGE,
        11.0,
        "start",
        false,
    );
    c.circle((c.x(granted), b), 6.0, ORANGE, true);
    c.text(
        (c.x(granted) - 8.0, b - 8.0),
        "acquires, token 42",
        ORANGE,
        11.5,
        "end",
        true,
    );
    c.rect(
        (c.x(granted), server - 8.0),
        (c.x(20.0) - c.x(granted), 16.0),
        ORANGE,
        0.3,
    );
    c.text(
        (c.x(20.0) - 4.0, server + 4.0),
        "B's key, token 42",
        ORANGE,
        11.0,
        "end",
        false,
    );
    let x = c.x(14.6);
    c.arrow((x, b + 6.0), (x, store - 8.0), ORANGE, false);
    c.text(
        (x - 5.0, store - 14.0),
        "write(42) ✓",
        GREEN,
        11.5,
        "end",
        true,
    );

    // The stale write arrives after B's: refused, 41 < 42.
    let x = c.x(arrives);
    c.circle((x, store), 6.0, RED, false);
    c.line(
        (x - 4.0, store - 4.0),
        (x + 4.0, store + 4.0),
        RED,
        1.8,
        false,
    );
    c.line(
        (x - 4.0, store + 4.0),
        (x + 4.0, store - 4.0),
        RED,
        1.8,
        false,
    );
    c.text(
        (x, store + 22.0),
        "write(41) refused: 41 < 42",
        RED,
        11.5,
        "middle",
        true,
    );

    c.axis(405.0, 2.0);
    c.finish(
        &format!("Losing a lock safely (TTL {TTL:.0} s)"),
        &[
            "lost() fires 0.9 × TTL after A's last confirmed renewal, before the server expires A's key; only then can B acquire.",
            "A write already in flight is stopped by the store, which refuses any token lower than the highest it accepted.",
        ],
    )
}

fn main() {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/pictures"));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    for (name, svg) in [("lifecycle.svg", lifecycle()), ("failure.svg", failure())] {
        let path = dir.join(name);
        std::fs::write(&path, svg).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        println!("{}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed pictures are what this program draws: rerun it after changing it.
    #[test]
    fn committed_pictures_are_up_to_date() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/pictures");
        for (name, svg) in [("lifecycle.svg", lifecycle()), ("failure.svg", failure())] {
            let committed = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
            assert!(
                committed == svg,
                "docs/pictures/{name} is stale: run `cargo run -p dlock-pictures`"
            );
        }
    }

    #[test]
    fn pictures_embed_in_rustdoc() {
        for svg in [lifecycle(), failure()] {
            let first = svg.lines().next().unwrap();
            assert!(
                first.starts_with("<svg ") && first.ends_with('>'),
                "first line: {first}"
            );
            assert!(
                !svg.contains("\n\n"),
                "a blank line would end rustdoc's HTML block"
            );
            assert!(
                !svg.contains(" id="),
                "ids would clash between two pictures on one page"
            );
        }
    }
}
