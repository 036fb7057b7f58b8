//! Relations built the way a DataFrame client (pyspark, the Scala client) sends them: a range,
//! then select, filter, group-by with aggregates, order-by and limit over unresolved columns and
//! function calls, every relation numbered with a plan id. Pure; the warm-up runs them so Spark's planner for these relations is warm
//! before a user's first DataFrame query (SQL text takes another path through the parser).

use crate::proto::{
    Aggregate, Expression, Filter, Limit, Project, Range, Relation, RelationCommon, Sort,
    aggregate,
    expression::{self, Alias, Literal, SortOrder, UnresolvedAttribute, UnresolvedFunction},
    relation,
};

/// A column by name.
pub fn col(name: &str) -> Expression {
    expr(expression::ExprType::UnresolvedAttribute(
        UnresolvedAttribute {
            unparsed_identifier: name.into(),
        },
    ))
}

/// An integer literal.
pub fn lit(value: i32) -> Expression {
    expr(expression::ExprType::Literal(Literal {
        literal_type: Some(expression::literal::LiteralType::Integer(value)),
    }))
}

/// A call of Spark function `name` (operators are functions too: `"%"`, `"="`, `">"`).
pub fn call(name: &str, arguments: Vec<Expression>) -> Expression {
    expr(expression::ExprType::UnresolvedFunction(
        UnresolvedFunction {
            function_name: name.into(),
            arguments,
            is_distinct: false,
        },
    ))
}

/// `expression AS name`.
pub fn alias(expression: Expression, name: &str) -> Expression {
    expr(expression::ExprType::Alias(Box::new(Alias {
        expr: Some(Box::new(expression)),
        name: vec![name.into()],
    })))
}

fn expr(expr_type: expression::ExprType) -> Expression {
    Expression {
        expr_type: Some(expr_type),
    }
}

/// `spark.range(start, end, 1, partitions)`.
pub fn range(start: i64, end: i64, partitions: i32) -> Relation {
    rel(
        0,
        relation::RelType::Range(Range {
            start: Some(start),
            end,
            step: 1,
            num_partitions: Some(partitions),
        }),
    )
}

fn rel(plan_id: i64, rel_type: relation::RelType) -> Relation {
    Relation {
        common: Some(RelationCommon {
            plan_id: Some(plan_id),
        }),
        rel_type: Some(rel_type),
    }
}

/// The plan id of a relation on top of `input`.
fn next_id(input: &Relation) -> i64 {
    input
        .common
        .as_ref()
        .and_then(|c| c.plan_id)
        .unwrap_or(0)
        .saturating_add(1)
}

/// The DataFrame operations, each a new relation on top of this one.
impl Relation {
    /// A relation that `make` builds around this one (its input), numbered one above it.
    fn on_top(self, make: impl FnOnce(Option<Box<Relation>>) -> relation::RelType) -> Relation {
        let id = next_id(&self);
        rel(id, make(Some(Box::new(self))))
    }

    /// `df.select(...)`.
    pub fn select(self, expressions: Vec<Expression>) -> Relation {
        self.on_top(|input| relation::RelType::Project(Box::new(Project { input, expressions })))
    }

    /// `df.filter(condition)`.
    pub fn filter(self, condition: Expression) -> Relation {
        self.on_top(|input| {
            relation::RelType::Filter(Box::new(Filter {
                input,
                condition: Some(condition),
            }))
        })
    }

    /// `df.groupBy(grouping).agg(aggregates)`.
    pub fn group_by(self, grouping: Vec<Expression>, aggregates: Vec<Expression>) -> Relation {
        self.on_top(|input| {
            relation::RelType::Aggregate(Box::new(Aggregate {
                input,
                group_type: aggregate::GroupType::Groupby.into(),
                grouping_expressions: grouping,
                aggregate_expressions: aggregates,
            }))
        })
    }

    /// `df.orderBy(columns)`, ascending, nulls first (a global sort).
    pub fn order_by(self, columns: Vec<Expression>) -> Relation {
        let order = columns
            .into_iter()
            .map(|child| SortOrder {
                child: Some(Box::new(child)),
                direction: expression::sort_order::SortDirection::Ascending.into(),
                null_ordering: expression::sort_order::NullOrdering::SortNullsFirst.into(),
            })
            .collect();
        self.on_top(|input| {
            relation::RelType::Sort(Box::new(Sort {
                input,
                order,
                is_global: Some(true),
            }))
        })
    }

    /// `df.limit(n)`.
    pub fn limit(self, n: i32) -> Relation {
        self.on_top(|input| relation::RelType::Limit(Box::new(Limit { input, limit: n })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn a_group_by_encodes_with_spark_s_field_numbers() {
        let plan = range(0, 10, 2).group_by(
            vec![alias(call("%", vec![col("id"), lit(3)]), "k")],
            vec![alias(call("count", vec![lit(1)]), "n")],
        );
        let bytes = plan.encode_to_vec();
        // Relation.common (field 1: plan_id, field 2) comes first, then Relation.aggregate
        // (field 9) or Relation.range (field 15), all length-delimited but the id.
        assert_eq!(bytes[..5], [0x0a, 0x02, 0x10, 0x01, 0x4a]);
        assert_eq!(
            range(0, 10, 2).encode_to_vec()[..5],
            [0x0a, 0x02, 0x10, 0x00, 0x7a]
        );
        assert_eq!(Relation::decode(bytes.as_slice()).ok(), Some(plan));
    }

    #[test]
    fn every_relation_has_a_plan_id_above_its_input_s() {
        let plan = range(0, 10, 1).filter(col("x")).limit(3);
        let id = |r: &Relation| r.common.as_ref().and_then(|c| c.plan_id);
        assert_eq!(id(&plan), Some(2));
        let Some(relation::RelType::Limit(limit)) = &plan.rel_type else {
            panic!("not a limit");
        };
        assert_eq!(limit.input.as_deref().and_then(id), Some(1));
    }

    #[test]
    fn order_by_is_a_global_ascending_sort() {
        let sorted = range(0, 10, 1).order_by(vec![col("id")]);
        let Some(relation::RelType::Sort(sort)) = sorted.rel_type else {
            panic!("not a sort: {sorted:?}");
        };
        assert_eq!(sort.is_global, Some(true));
        assert_eq!(
            sort.order[0].direction(),
            expression::sort_order::SortDirection::Ascending
        );
    }
}
