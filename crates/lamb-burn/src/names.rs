//! Parameter names from module paths: the dotted path of struct fields (and `Vec`/tuple
//! indices) that leads to each float parameter, e.g. `encoder.0.attention.query.weight`,
//! exactly the path Burn's `ModuleOptimizer` matches `ParamGroup`s against.

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::tensor::Tensor;

/// A float parameter of a module: its id, its path and its shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedParam {
    /// Burn's parameter id (kept by module records, so a reloaded module has the same ids).
    pub id: ParamId,
    /// Dotted module path (the name exclusion patterns search and telemetry reports).
    pub name: String,
    /// Shape of the parameter.
    pub shape: Vec<usize>,
}

/// Every float parameter of `module` with its module path, in Burn's traversal order (the
/// order in which `ModuleOptimizer` steps them).
pub fn module_params<M: Module>(module: &M) -> Vec<NamedParam> {
    let mut v = PathCollector::default();
    module.visit(&mut v);
    v.out
}

#[derive(Default)]
struct PathCollector {
    path: Vec<String>,
    out: Vec<NamedParam>,
}

impl ModuleVisitor for PathCollector {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.out.push(NamedParam {
            id: param.id,
            name: self.path.join("."),
            shape: param.val().dims().to_vec(),
        });
    }
}
