//! Lists a page at a time: the query's `q` (a search) and `page` (from 1),
//! and the previous/next links that keep the search.

use std::collections::HashMap;

use maud::{Markup, html};

use super::Console;

/// Rows per page of a list.
pub(crate) const PER_PAGE: i64 = 50;
/// The longest search text taken.
const MAX_SEARCH: usize = 255;

/// A request's query parameters (the last value of each name).
pub(crate) fn params(raw: Option<&str>) -> HashMap<String, String> {
    url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The search text of `q`, trimmed and cut to a sane length.
pub(crate) fn search_of(params: &HashMap<String, String>) -> String {
    params
        .get("q")
        .map(|q| q.trim().chars().take(MAX_SEARCH).collect())
        .unwrap_or_default()
}

/// The page asked for (1 when absent or not a number), kept so that its
/// offset fits.
pub(crate) fn page_of(params: &HashMap<String, String>) -> i64 {
    params
        .get("page")
        .and_then(|p| p.trim().parse::<i64>().ok())
        .unwrap_or(1)
        .clamp(1, i64::MAX / PER_PAGE / 2)
}

/// `path?` with `pairs` (empty values left out) and `page`.
pub(crate) fn href_with(path: &str, pairs: &[(&str, &str)], page: i64) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs.iter().filter(|(_, v)| !v.is_empty()) {
        query.append_pair(k, v);
    }
    if page > 1 {
        query.append_pair("page", &page.to_string());
    }
    let query = query.finish();
    if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{query}")
    }
}

/// "Page 2 of 7" with previous and next links; nothing for one page.
pub(crate) fn pager(path: &str, pairs: &[(&str, &str)], page: i64, total: i64) -> Markup {
    let pages = ((total + PER_PAGE - 1) / PER_PAGE).max(1);
    html! {
        @if pages > 1 || page > 1 {
            nav.pager aria-label="Pages" {
                @if page > 1 {
                    a rel="prev" href=(href_with(path, pairs, (page - 1).min(pages))) { "← Previous" }
                }
                span { "Page " (page) " of " (pages) }
                @if page < pages {
                    a rel="next" href=(href_with(path, pairs, page + 1)) { "Next →" }
                }
            }
        }
    }
}

/// A list searched and paged in memory (lists of at most a few thousand
/// rows the API reads whole: resources, policies).
pub struct Listing {
    pub q: String,
    pub page: i64,
}

impl Listing {
    /// The list's place from the request's query string.
    pub fn from_query(raw: Option<&str>) -> Listing {
        let params = params(raw);
        Listing {
            q: search_of(&params),
            page: page_of(&params),
        }
    }

    /// Whether `fields` (a row's searchable texts) match the search.
    pub fn matches<'a>(&self, fields: impl IntoIterator<Item = &'a str>) -> bool {
        let q = self.q.to_lowercase();
        q.is_empty() || fields.into_iter().any(|f| f.to_lowercase().contains(&q))
    }

    /// This page of `rows` (already searched).
    pub fn slice<'r, T>(&self, rows: &'r [T]) -> &'r [T] {
        let per = PER_PAGE as usize;
        let start = usize::try_from(self.page - 1)
            .unwrap_or(0)
            .saturating_mul(per)
            .min(rows.len());
        &rows[start..start.saturating_add(per).min(rows.len())]
    }

    /// The search form and the pager of the list at `path` (in the
    /// account) with `total` rows found.
    pub fn controls(&self, c: &Console, path: &str, total: usize) -> (Markup, Markup) {
        let href = c.href(path);
        let search = html! {
            form.search method="get" action=(href) role="search" {
                label for="list-q" { "Search" }
                input #list-q type="search" name="q" value=(self.q);
                " " button.secondary type="submit" { "Search" }
                " " span.muted { (total) " in all" }
            }
        };
        let total = i64::try_from(total).unwrap_or(i64::MAX);
        (search, pager(&href, &[("q", &self.q)], self.page, total))
    }
}
