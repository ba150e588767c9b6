//! Local placeholder so the data worktree builds; the real module lives on main. NOT COMMITTED.
