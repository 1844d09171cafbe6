//! The report as one self-contained HTML page: `report.md` rendered as it is, its figures
//! inlined as SVG data, every table sortable by a click on a column's header. Readers share
//! one file, opened from disk without a server; nothing in it is fetched.

use std::collections::BTreeMap;

use base64::Engine as _;
use pulldown_cmark::{CowStr, Event, Options, Parser, Tag, TagEnd};

/// The page's style: readable tables that scroll sideways on narrow screens.
const STYLE: &str = r#"
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 80em; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; display: block; overflow-x: auto; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; white-space: nowrap; }
th { background: #f2f2f2; cursor: pointer; user-select: none; position: sticky; top: 0; }
th[aria-sort=ascending]::after { content: " ▲"; }
th[aria-sort=descending]::after { content: " ▼"; }
tbody tr:nth-child(even) { background: #fafafa; }
code { background: #f4f4f4; padding: 0 0.2em; }
img.figure { max-width: 100%; display: block; margin: 0.5em 0; }
"#;

/// Sorting: a header click orders the rows by that column, numbers by their leading value
/// (`48.3 [25.3–71.2] ▼` sorts as 48.3, `1,167` as 1167), text alphabetically; a second
/// click reverses. Cells with no number (`-`) stay last either way.
const SCRIPT: &str = r#"
function sortKey(cell) {
  const text = cell ? cell.textContent.trim() : "";
  const m = text.replace(/,/g, "").match(/^[-+]?\d+(\.\d+)?(e[-+]?\d+)?/i);
  return { number: m ? parseFloat(m[0]) : null, text: text };
}
function compareKeys(a, b, direction) {
  if (a.number !== null && b.number !== null) {
    return direction * (a.number - b.number || a.text.localeCompare(b.text));
  }
  if (a.number !== null) return -1;
  if (b.number !== null) return 1;
  if (a.text === "-" || b.text === "-") return (a.text === "-") - (b.text === "-");
  return direction * a.text.localeCompare(b.text);
}
for (const table of document.querySelectorAll("table")) {
  const head = table.tHead, body = table.tBodies[0];
  if (!head || !body) continue;
  const headers = Array.from(head.rows[0].cells);
  headers.forEach((th, column) => {
    th.tabIndex = 0;
    th.title = "sort by this column";
    const sort = () => {
      const direction = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
      headers.forEach(h => h.removeAttribute("aria-sort"));
      th.setAttribute("aria-sort", direction === 1 ? "ascending" : "descending");
      const rows = Array.from(body.rows);
      rows.sort((a, b) => compareKeys(sortKey(a.cells[column]), sortKey(b.cells[column]), direction));
      for (const row of rows) body.appendChild(row);
    };
    th.addEventListener("click", sort);
    th.addEventListener("keydown", e => {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sort(); }
    });
  });
}
"#;

/// Render `markdown` as a page titled `title`. `figures` maps a figure's file name as the
/// markdown links it (`needle_x.png`, `needle_x.svg`) to the SVG drawn for it: images of
/// those files show the SVG inline, and links to them download it.
pub fn page(title: &str, markdown: &str, figures: &BTreeMap<String, String>) -> String {
    let data_uri = |file: &str| {
        format!(
            "data:image/svg+xml;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(&figures[file])
        )
    };
    let mut events = Vec::new();
    let mut in_figure: Option<(String, String)> = None;
    let mut in_download = false;
    for event in Parser::new_ext(markdown, Options::ENABLE_TABLES) {
        match (&mut in_figure, event) {
            (None, Event::Start(Tag::Image { dest_url, .. }))
                if figures.contains_key(&*dest_url) =>
            {
                in_figure = Some((data_uri(&dest_url), String::new()));
            }
            (Some((_, alt)), Event::Text(text)) => alt.push_str(&text),
            (Some(_), Event::End(TagEnd::Image)) => {
                let (uri, alt) = in_figure.take().expect("inside a figure");
                events.push(Event::InlineHtml(CowStr::from(format!(
                    "<img class=\"figure\" alt=\"{}\" src=\"{uri}\">",
                    escape(&alt)
                ))));
            }
            (Some(_), _) => {}
            (None, Event::Start(Tag::Link { dest_url, .. }))
                if figures.contains_key(&*dest_url) =>
            {
                let uri = data_uri(&dest_url);
                events.push(Event::InlineHtml(CowStr::from(format!(
                    "<a download=\"{}\" href=\"{uri}\">",
                    escape(&dest_url)
                ))));
                in_download = true;
            }
            (None, Event::End(TagEnd::Link)) if in_download => {
                events.push(Event::InlineHtml(CowStr::Borrowed("</a>")));
                in_download = false;
            }
            // The report holds no markup of its own: text that looks like a tag (a model's
            // or a spec's name) shows as written.
            (None, Event::Html(text) | Event::InlineHtml(text)) => events.push(Event::Text(text)),
            (None, event) => events.push(event),
        }
    }
    let mut body = String::new();
    pulldown_cmark::html::push_html(&mut body, events.into_iter());
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}<script>{SCRIPT}</script>\n</body>\n</html>\n",
        escape(title)
    )
}

/// Text made safe inside an HTML attribute or element.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_inlined_and_tables_rendered() {
        let svg = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"4\" height=\"4\"/>";
        let figures = BTreeMap::from([
            ("a.png".to_string(), svg.to_string()),
            ("a.svg".to_string(), svg.to_string()),
        ]);
        let md = "# Title\n\n| method | score |\n|---|--:|\n| baseline | 48.3 [25.3–71.2] |\n\n- h2o <x>: ![h2o](a.png) ([SVG](a.svg)), [elsewhere](b.html)\n";
        let html = page("r & d", md, &figures);
        let uri = format!(
            "data:image/svg+xml;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(svg)
        );
        assert!(html.contains("<title>r &amp; d</title>"), "{html}");
        assert!(
            html.contains(&format!("<img class=\"figure\" alt=\"h2o\" src=\"{uri}\">")),
            "{html}"
        );
        assert!(
            html.contains(&format!("<a download=\"a.svg\" href=\"{uri}\">SVG</a>")),
            "{html}"
        );
        assert!(html.contains("<a href=\"b.html\">elsewhere</a>"), "{html}");
        assert!(html.contains("<th>method</th>"), "{html}");
        assert!(html.contains("48.3 [25.3–71.2]"), "{html}");
        assert!(html.contains("h2o &lt;x&gt;"), "{html}");
        assert!(!html.contains("a.png\""), "{html}");
    }
}
