//! `compare`'s plan: the arguments checked into objectives × seeds, each run's
//! config and folder, and the checks every run passes before any trains.

use std::path::PathBuf;

use cotext::task::TaskKind;
use cotext::train::{ObjectiveKind, RunConfig};

use super::{name, user_error, CompareArgs};

/// `compare`'s arguments, checked: nothing below re-validates.
pub(super) struct Plan {
    pub(super) config_path: PathBuf,
    pub(super) overrides: Vec<String>,
    pub(super) objectives: Vec<ObjectiveKind>,
    pub(super) seeds: Vec<u64>,
    pub(super) out: PathBuf,
    pub(super) jobs: usize,
    pub(super) progress: bool,
    pub(super) attack: Vec<super::attack::Spec>,
}

impl Plan {
    pub(super) fn from_args(args: CompareArgs) -> anyhow::Result<Plan> {
        let mut objectives = Vec::new();
        for raw in args
            .objectives
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let o: ObjectiveKind = raw
                .parse()
                .map_err(|e| user_error(format!("--objectives: {e}")))?;
            if objectives.contains(&o) {
                return Err(user_error(format!("--objectives: {raw} is listed twice")));
            }
            objectives.push(o);
        }
        if objectives.is_empty() {
            return Err(user_error(
                "--objectives: give at least one of ce, cot, gce, hcot, cot-joint".into(),
            ));
        }
        if args.jobs == 0 {
            return Err(user_error("--jobs must be at least 1".into()));
        }
        if args.seeds == 0 {
            return Err(user_error("--seeds must be at least 1".into()));
        }
        let last = args.first_seed.checked_add(args.seeds - 1).ok_or_else(|| {
            user_error(format!(
                "--first-seed {} + --seeds {} overflows",
                args.first_seed, args.seeds
            ))
        })?;
        let overrides = crate::cli::overrides(
            args.set,
            args.device.as_deref(),
            args.precision,
            args.data_dir.as_deref(),
        );
        let out = args.out.unwrap_or_else(|| {
            let stem = args
                .config
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "config".into());
            PathBuf::from("runs").join(format!("compare-{stem}"))
        });
        let attack = super::attack::parse_specs(&args.attack)?;
        let plan = Plan {
            config_path: args.config,
            overrides,
            objectives,
            seeds: (args.first_seed..=last).collect(),
            out,
            jobs: args.jobs,
            progress: !args.quiet,
            attack,
        };
        // A bad config or --set fails here, before any run starts.
        for &o in &plan.objectives {
            plan.config(o, plan.seeds[0])?;
        }
        Ok(plan)
    }

    pub(super) fn config(&self, objective: ObjectiveKind, seed: u64) -> cotext::Result<RunConfig> {
        let mut overrides = self.overrides.clone();
        overrides.push(format!("train.objective=\"{}\"", name(objective)));
        overrides.push(format!("train.seed={seed}"));
        RunConfig::load(&self.config_path, &overrides)
    }

    pub(super) fn run_dir(&self, objective: ObjectiveKind, seed: u64) -> PathBuf {
        self.out.join(format!("{}-seed{seed}", name(objective)))
    }

    /// The task of the plan's data set, after checking every objective against it
    /// (HCOT's hierarchy against the classes, the metric, the model kind) and
    /// `--attack` against the task: a bad combination fails before anything
    /// trains, not after the runs listed before it.
    pub(super) fn check(&self) -> anyhow::Result<TaskKind> {
        let task = TaskKind::of_config(&self.config(self.objectives[0], self.seeds[0])?)?;
        if task == TaskKind::Translation && !self.attack.is_empty() {
            return Err(user_error("--attack is for classification configs".into()));
        }
        for &objective in &self.objectives {
            task.preflight(&self.config(objective, self.seeds[0])?)
                .map_err(|e| {
                    anyhow::Error::new(e).context(format!("objective {}", name(objective)))
                })?;
        }
        Ok(task)
    }

    /// Every (objective, seed) in the order the report lists them.
    pub(super) fn runs(&self) -> impl Iterator<Item = (ObjectiveKind, u64)> + '_ {
        self.objectives
            .iter()
            .flat_map(|&o| self.seeds.iter().map(move |&s| (o, s)))
    }
}
