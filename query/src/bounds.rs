//! How big a statement's shape may be, checked before it is planned.
//!
//! The engine's planner, optimizer and expression code walk trees by
//! recursion, so a statement's depth is stack depth: a `SELECT 1+1+...+1`
//! of a few hundred terms (a left-deep chain the parser builds without
//! recursing, so its own recursion limit never sees it) once overflowed a
//! worker's stack and aborted the whole node. Two checks keep that out:
//!
//! 1. Before parsing, on the flat token stream (no recursion): operators,
//!    `SELECT`s and parenthesis nesting are counted. This bounds the tree
//!    any parse of the text can build, whatever the parser does with it.
//! 2. After parsing, the tree's real depth: expression nesting (every
//!    operator of a chain is a level) and query nesting (subqueries and
//!    CTEs, each CTE that reads another counts as a level).
//!
//! The limits are far above what analytic SQL needs (the service's own KPI
//! statements use a fraction) and far below what overflows a stack.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{Expr, Query, Statement, Visit, Visitor};
use datafusion::sql::sqlparser::dialect::Dialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

/// Bounds on a statement's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeLimits {
    /// Operators (`+`, `||`, `=`, `AND`, `CASE`, ...) in the whole statement.
    pub max_operators: usize,
    /// Parentheses open at once.
    pub max_parentheses: usize,
    /// `SELECT`s in the whole statement (subqueries, unions and CTEs).
    pub max_selects: usize,
    /// Expression nesting, each operator of a chain one level.
    pub max_expression_depth: usize,
    /// Queries nested in queries (subqueries, CTE bodies).
    pub max_query_depth: usize,
}

impl Default for ShapeLimits {
    fn default() -> Self {
        Self {
            max_operators: 512,
            max_parentheses: 32,
            max_selects: 32,
            max_expression_depth: 64,
            max_query_depth: 12,
        }
    }
}

/// What was too big, for the caller's 400 answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the statement has {found} {what}; at most {max} are accepted")]
pub struct TooComplex {
    pub what: &'static str,
    pub found: usize,
    pub max: usize,
}

fn over(what: &'static str, found: usize, max: usize) -> Result<(), TooComplex> {
    if found > max {
        Err(TooComplex { what, found, max })
    } else {
        Ok(())
    }
}

/// Check 1: the token stream. A text that does not tokenize passes here
/// and gets the parser's own error next.
pub fn check_tokens(
    sql: &str,
    dialect: &dyn Dialect,
    limits: &ShapeLimits,
) -> Result<(), TooComplex> {
    let Ok(tokens) = Tokenizer::new(dialect, sql).tokenize() else {
        return Ok(());
    };
    let (mut operators, mut selects, mut depth, mut deepest) = (0usize, 0usize, 0usize, 0usize);
    for token in &tokens {
        match token {
            Token::LParen | Token::LBracket | Token::LBrace => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            Token::RParen | Token::RBracket | Token::RBrace => depth = depth.saturating_sub(1),
            Token::Word(word) => match word.keyword {
                Keyword::SELECT => selects += 1,
                Keyword::AND
                | Keyword::OR
                | Keyword::NOT
                | Keyword::IS
                | Keyword::LIKE
                | Keyword::ILIKE
                | Keyword::SIMILAR
                | Keyword::BETWEEN
                | Keyword::IN
                | Keyword::CASE
                | Keyword::WHEN
                | Keyword::UNION
                | Keyword::INTERSECT
                | Keyword::EXCEPT
                | Keyword::JOIN
                | Keyword::AT => operators += 1,
                _ => {}
            },
            t if is_operator(t) => operators += 1,
            _ => {}
        }
    }
    over("operators", operators, limits.max_operators)?;
    over("nested parentheses", deepest, limits.max_parentheses)?;
    over("SELECTs", selects, limits.max_selects)
}

/// Every token that is neither a word, a literal, a separator nor space:
/// arithmetic, comparison, string, JSON and cast operators alike.
fn is_operator(token: &Token) -> bool {
    !matches!(
        token,
        Token::EOF
            | Token::Word(_)
            | Token::Number(..)
            | Token::Char(_)
            | Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::TripleSingleQuotedString(_)
            | Token::TripleDoubleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::DoubleQuotedByteStringLiteral(_)
            | Token::TripleSingleQuotedByteStringLiteral(_)
            | Token::TripleDoubleQuotedByteStringLiteral(_)
            | Token::SingleQuotedRawStringLiteral(_)
            | Token::DoubleQuotedRawStringLiteral(_)
            | Token::TripleSingleQuotedRawStringLiteral(_)
            | Token::TripleDoubleQuotedRawStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::QuoteDelimitedStringLiteral(_)
            | Token::NationalQuoteDelimitedStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::HexStringLiteral(_)
            | Token::Comma
            | Token::Whitespace(_)
            | Token::Period
            | Token::SemiColon
            | Token::LParen
            | Token::RParen
            | Token::LBracket
            | Token::RBracket
            | Token::LBrace
            | Token::RBrace
            | Token::Placeholder(_)
    )
}

/// Check 2: the parsed tree's depth. Run only after [`check_tokens`], which
/// bounds how deep this walk itself can go.
pub fn check_tree(statement: &Statement, limits: &ShapeLimits) -> Result<(), TooComplex> {
    let mut depth = Depth::default();
    let _ = statement.visit(&mut depth);
    over(
        "levels of nested expressions",
        depth.deepest_expr,
        limits.max_expression_depth,
    )?;
    // A CTE that reads the one before it plans as one level deeper, so a
    // chain of CTEs counts as deep as it is long.
    let queries = depth.deepest_query + depth.ctes;
    over(
        "levels of nested queries and CTEs",
        queries,
        limits.max_query_depth,
    )
}

#[derive(Default)]
struct Depth {
    expr: usize,
    deepest_expr: usize,
    query: usize,
    deepest_query: usize,
    ctes: usize,
}

impl Visitor for Depth {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        self.query += 1;
        self.deepest_query = self.deepest_query.max(self.query);
        if let Some(with) = &query.with {
            self.ctes += with.cte_tables.len();
        }
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
        self.query -= 1;
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, _: &Expr) -> ControlFlow<()> {
        self.expr += 1;
        self.deepest_expr = self.deepest_expr.max(self.expr);
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, _: &Expr) -> ControlFlow<()> {
        self.expr -= 1;
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    use super::*;

    fn check(sql: &str) -> Result<(), TooComplex> {
        let limits = ShapeLimits::default();
        check_tokens(sql, &GenericDialect {}, &limits)?;
        let statement = Parser::parse_sql(&GenericDialect {}, sql)
            .expect("parses")
            .remove(0);
        check_tree(&statement, &limits)
    }

    fn chain(op: &str, term: &str, n: usize) -> String {
        vec![term; n].join(op)
    }

    #[test]
    fn long_operator_chains_are_refused_before_parsing() {
        for (op, term, n) in [
            (" + ", "1", 8000),
            (" AND ", "true", 2000),
            (" || ", "'a'", 3000),
        ] {
            let sql = format!("SELECT {} AS x", chain(op, term, n));
            let e = check(&sql).unwrap_err();
            assert_eq!(e.what, "operators", "{op}");
        }
        // Under the operator count, the parsed depth refuses it.
        let sql = format!("SELECT {} AS x", chain(" + ", "1", 300));
        assert_eq!(
            check(&sql).unwrap_err().what,
            "levels of nested expressions"
        );
    }

    #[test]
    fn a_chain_under_the_operator_count_is_still_refused_when_too_deep() {
        let sql = format!("SELECT {} AS x", chain(" + ", "1", 100));
        assert_eq!(
            check(&sql).unwrap_err().what,
            "levels of nested expressions"
        );
        let sql = format!("SELECT {} AS x", chain(" + ", "1", 40));
        check(&sql).expect("40 terms are fine");
    }

    #[test]
    fn chained_ctes_and_nested_subqueries_are_bounded() {
        let mut sql = String::from("WITH c0 AS (SELECT 1 AS x)");
        for i in 1..300 {
            sql += &format!(", c{i} AS (SELECT x FROM c{})", i - 1);
        }
        sql += " SELECT * FROM c299";
        assert_eq!(check(&sql).unwrap_err().what, "SELECTs");
        let mut sql = String::from("WITH c0 AS (SELECT 1 AS x)");
        for i in 1..20 {
            sql += &format!(", c{i} AS (SELECT x FROM c{})", i - 1);
        }
        sql += " SELECT * FROM c19";
        assert_eq!(
            check(&sql).unwrap_err().what,
            "levels of nested queries and CTEs"
        );
        let nested = (0..20).fold("SELECT 1 AS x".to_string(), |q, _| {
            format!("SELECT x FROM ({q}) t")
        });
        assert!(check(&nested).is_err());
    }

    #[test]
    fn ordinary_analytic_sql_passes() {
        check(
            "WITH d AS (SELECT subject, sum(active_s) AS a FROM activity WHERE date >= '2026-01-01' \
             AND (department = 'Sales' OR department IN ('Ops', 'Field')) GROUP BY subject) \
             SELECT subject, a, CASE WHEN a > 3600 THEN 'long' ELSE 'short' END AS k \
             FROM d ORDER BY a DESC LIMIT 10",
        )
        .expect("passes");
    }
}
