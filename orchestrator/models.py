"""The catalogue's file kinds as pydantic models: what a board, option, distro or recipe file may say.

These are the edge of cipbuild (YAML in); ``catalog.py`` loads them, ``matrix.py`` and
``kasfile.py`` read them. ``schemas/*.schema.json`` is generated from these classes.
"""

from __future__ import annotations

import re
import string
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

# One pattern for every name that becomes part of a job id, a folder or a file name: no '/', no
# leading, trailing or doubled separator, so a name is never a path and ids split cleanly on '-'.
NAME = r"^[a-z0-9]+(?:[.+-][a-z0-9]+)*$"
Name = Annotated[
    str,
    Field(
        pattern=NAME,
        description="lower-case name: letters and digits, joined by single '.', '+' or '-'",
    ),
]
# bitbake's own names (MACHINE, DISTRO, image recipes) end up in deploy paths and globs.
BITBAKE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._+-]*$"
BitbakeName = Annotated[
    str, Field(pattern=BITBAKE_NAME, description="a bitbake name: letters, digits, '.', '_', '+', '-'")
]


def template_problem(template: str, allowed: tuple[str, ...]) -> str | None:
    """Why ``template`` is not a plain format string over ``allowed`` fields, or None."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        return f"not a valid template ({exc}); write a literal brace as {{{{ or }}}}"
    fields = ", ".join("{" + f + "}" for f in allowed)
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if any(c in name for c in ".[]"):
            return f"{{{name}}} uses attribute or index access; only plain fields are allowed: {fields}"
        if name not in allowed:
            return f"unknown field {{{name}}}; it may use {fields}"
        if spec or conversion:
            return f"{{{name}}} takes no conversion or format spec; write it as {{{name}}}"
    return None


def _template(*allowed: str) -> AfterValidator:
    def check(value: str) -> str:
        problem = template_problem(value, allowed)
        if problem:
            raise ValueError(problem)
        return value

    return AfterValidator(check)


def _relative_path(value: str) -> str:
    """A path that stays inside the folder it is relative to."""
    path = PurePosixPath(value)
    if path.is_absolute() or ".." in path.parts or "\\" in value:
        raise ValueError(f"'{value}' must be a relative path inside its folder (no leading '/', no '..')")
    return value


# the same test for the JSON Schema (pydantic's own regex engine has no lookahead)
RELATIVE_PATH = r"^(?!/)(?!(?:.*/)?\.\.(?:/|$))[^\\]+$"
RelativePath = Annotated[
    str, Field(min_length=1, json_schema_extra={"pattern": RELATIVE_PATH}), AfterValidator(_relative_path)
]
IMAGE_FIELDS = ("target", "distro", "machine", "release", "suffix")
ARTIFACT_FIELDS = ("image", "rootfs", "machine")
VERSION = r"^[0-9]+(\.[0-9]+)*$"
Version = Annotated[str, Field(pattern=VERSION, description="a version like 6.1 or 5.10")]
Arch = Literal["amd64", "arm64", "armhf", "riscv64", "i386"]
ArtifactType = Literal[
    "wic",
    "wic.bmap",
    "wic.xz",
    "ext4",
    "tar.gz",
    "tar.bz2",
    "cpio.gz",
    "squashfs",
    "verity",
    "swu",
    "kernel",
    "initrd",
    "dtb",
    "firmware",
    "manifest",
    "dpkg_status",
    "testdata",
    "sbom",
    "other",
]


def _leave_out(schema: dict[str, Any]) -> None:
    """JSON Schema of a field that is left out rather than set to null: no null, no default."""
    schema.pop("default", None)
    if "anyOf" in schema:
        branches = [b for b in schema.pop("anyOf") if b != {"type": "null"}]
        if len(branches) == 1:
            schema.update(branches[0])
        else:
            schema["anyOf"] = branches


def optional(**kwargs: Any) -> Any:
    """A field that may be left out (then None) but not set to null."""
    return Field(default=None, json_schema_extra=_leave_out, **kwargs)


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class KasRef(Model):
    """A kas file inside a pinned upstream repository, included with a kas cross-repo include."""

    repo: Name = Field(description="name of a repository pinned in kas/repos.yml")
    file: RelativePath = Field(description="path of the kas file inside that repository")

    def __str__(self) -> str:
        return f"{self.repo}:{self.file}"


KasFragment = Annotated[
    KasRef | str,
    Field(description="an upstream file {repo, file}, or a path of one of cipbuild's own kas/ fragments"),
]


class ArtifactRule(Model):
    """A file a build deploys; ``glob`` is relative to the deploy folder and may use {image},
    {rootfs} and {machine}. ``when``/``unless`` see the job's options with what they imply."""

    type: ArtifactType
    glob: Annotated[RelativePath, _template(*ARTIFACT_FIELDS)]
    required: bool = Field(default=True, description="a build that lacks it failed")
    when: list[Name] = Field(default_factory=list, description="only when the job has all these options")
    unless: list[Name] = Field(default_factory=list, description="not when the job has any of these options")


class BoardDistro(Model):
    """What a board is in one distro."""

    machine: BitbakeName = Field(description="bitbake MACHINE")
    kas: list[KasFragment] = Field(default_factory=list)
    repos: list[Name] = Field(default_factory=list, description="extra pinned repositories the board's files use")
    artifacts: list[ArtifactRule] = Field(default_factory=list)


class TestFacts(Model):
    """How the test stage boots this board."""

    device_type: str | None = Field(default=None, description="LAVA device type; null: not tested in LAVA")
    boot_method: Literal["qemu", "u-boot", "grub", "minimal", "none"] = "none"
    qemu: dict[str, str] = Field(default_factory=dict, description="qemu facts: arch, machine, cpu, firmware")
    plans: list[Name] = Field(default_factory=list, description="test plans (testplans/<name>.yml) that apply")
    tags: list[str] = Field(default_factory=list, description="LAVA device tags a job needs (e.g. swtpm-jobs)")
    stop_command: str = Field(
        default="manual_kill",
        description="the device dictionary's user command that stops qemu before an update plan boots the "
        "updated disk again (CIP's lab names it manual_kill)",
    )


class Login(Model):
    """How a test logs into the image on its console."""

    login_prompt: str = "login:"
    username: str = "root"
    password_prompt: str = "Password:"
    password: str = "root"
    prompt: str = Field(default="root@", description="what the shell prompt starts with once logged in")


class TestDefinition(Model):
    """A LAVA test definition: from a git repository at a fixed revision, or inline steps."""

    name: Name
    repository: str | None = Field(default=None, description="git URL; with revision and path")
    revision: str | None = Field(default=None, pattern=r"^[0-9a-f]{7,40}$|^[A-Za-z0-9._/-]+$")
    path: str | None = None
    steps: list[str] = Field(default_factory=list, description="inline steps (lava-test-case ... --shell ...)")
    parameters: dict[str, str] = Field(default_factory=dict)


class UpdatedBoot(Model):
    """A boot of the updated disk: the running one is stopped first (qemu) or the board reset."""

    boot_message: str | None = Field(
        default=None,
        description="what the kernel must print on this boot: upstream names the boot partition so "
        "(kernel: C:BOOT1:linux.efi)",
    )
    steps: list[str] = Field(default_factory=list, description="steps on what this boot booted")


class UpdateStage(Model):
    """An update plan's second half: the job's second build's artifact is installed on the booted
    first build, then the board boots the same disk again as often as ``boots`` says."""

    follow_up: Name = Field(description="the second build (a distro's follow_ups) whose artifact is installed")
    artifact: ArtifactType = Field(default="swu", description="the artifact of that second build to install")
    install: list[str] = Field(
        min_length=1, description="steps that install it; {url} is where the device fetches it, {sha256} its sha256"
    )
    boots: list[UpdatedBoot] = Field(
        default_factory=list,
        description="the boots after the install, in order (upstream: into the update, then, unconfirmed, back); "
        "none for a plan that checks that a broken update is refused",
    )


class TestPlanFile(Model):
    """testplans/<name>.yml: what one test plan boots and runs, on which jobs."""

    summary: str
    when: list[Name] = Field(default_factory=list, description="only jobs with all these options")
    unless: list[Name] = Field(default_factory=list, description="not jobs with any of these options")
    needs: list[ArtifactType] = Field(
        default=["kernel"], description="artifact types the plan deploys; a job lacking one is refused"
    )
    login: Login = Field(default_factory=Login)
    timeouts: dict[Literal["job", "deploy", "boot", "test"], int] = Field(
        default={"job": 30, "deploy": 10, "boot": 10, "test": 15}, description="minutes"
    )
    definitions: list[TestDefinition] = Field(default_factory=list)
    update: UpdateStage | None = Field(
        default=None, description="install a second build's update and boot it; only jobs that have that second build"
    )

    def applies(self, options: frozenset[str]) -> bool:
        """Whether a job with ``options`` (with what they imply) meets ``when`` and ``unless``."""
        return set(self.when) <= options and not set(self.unless) & options


class BoardFile(Model):
    """boards/<name>.yml: one board, under one name across distros."""

    description: str
    arch: Arch
    vendor: str | None = None
    distros: dict[Name, BoardDistro] = Field(min_length=1)
    test: TestFacts = Field(default_factory=TestFacts)


class OptionDistro(Model):
    """How one distro implements an option."""

    kas: list[KasFragment] = Field(default_factory=list)
    repos: list[Name] = Field(default_factory=list, description="extra pinned repositories the option's files use")
    target: BitbakeName | None = Field(
        default=None, description="the image recipe this option builds instead of the default"
    )
    image_suffix: str = Field(
        default="", pattern=r"^[A-Za-z0-9._+-]*$", description="appended to the image name (isar's IMAGE_FULLNAME)"
    )
    implies: list[Name] = Field(default_factory=list, description="options this one switches on by itself")
    requires: list[Name] = Field(default_factory=list, description="options a job must also have")
    conflicts: list[Name] = Field(default_factory=list, description="options a job must not also have")


class OptionFile(Model):
    """options/<name>.yml: a feature a job may switch on."""

    summary: str
    distros: dict[Name, OptionDistro] = Field(min_length=1)


class Release(Model):
    kas: list[KasFragment] = Field(default_factory=list)
    distro: BitbakeName = Field(description="bitbake DISTRO for this release")
    default_kernel: Version | None = Field(
        default=None, description="the kernel of a job that names none; required when the distro lists kernels"
    )
    debian: Version = Field(description="Debian version number")


class Kernel(Model):
    kas: list[KasFragment] = Field(default_factory=list)
    branch: str = Field(default="", description="CIP kernel branch")


class Selector(Model):
    """A condition on one field of a candidate job as the rules read it, parsed from one of the
    forms ``NameSelector``, ``ArchSelector`` and ``KernelSelector`` describe (never written so)."""

    any_of: list[str] | None = None
    none_of: list[str] | None = None
    below: Version | None = None
    at_least: Version | None = None


Names = Annotated[list[Name], Field(min_length=1)]
Versions = Annotated[list[Version], Field(min_length=1)]
Archs = Annotated[list[Arch], Field(min_length=1)]


class NotNames(Model):
    """Any value but these."""

    not_: Name | Names = Field(alias="not")


class NotArchs(Model):
    """Any architecture but these."""

    not_: Arch | Archs = Field(alias="not")


class KernelRange(Model):
    """Kernels not in ``not``, below ``below`` and at least ``at_least`` (give one or more)."""

    model_config = ConfigDict(json_schema_extra={"minProperties": 1})

    not_: Version | Versions | None = optional(alias="not")
    below: Version | None = optional()
    at_least: Version | None = optional()


# What a condition's fields may say; the JSON Schema shows these forms, the loader parses them.
NameSelector = Name | Names | NotNames
ArchSelector = Arch | Archs | NotArchs
KernelSelector = Version | Versions | KernelRange
ARCHES: tuple[str, ...] = get_args(Arch)
_SELECTOR_VALUES: dict[str, tuple[str, str]] = {  # field -> (pattern of a value, what a value is)
    "board": (NAME, "a board name"),
    "release": (NAME, "a release name"),
    "arch": ("|".join(ARCHES), "an architecture (" + ", ".join(ARCHES) + ")"),
    "kernel": (VERSION, 'a kernel version such as "6.1"'),
}


def _value(item: Any, field: str) -> str:
    pattern, what = _SELECTOR_VALUES[field]
    if isinstance(item, str) and re.fullmatch(pattern, item):
        return item
    if item is None:
        raise ValueError(f"no value: name {what}, or leave the field out")
    if isinstance(item, (int, float)) and not isinstance(item, bool):
        raise ValueError(f"{item!r} is a number, not {what}: quote it")
    raise ValueError(f"{item!r} is not {what}")


def _values(value: Any, field: str) -> list[str]:
    """A value or a non-empty list of values of the field's kind."""
    if not isinstance(value, list):
        return [_value(value, field)]
    if not value:
        raise ValueError("an empty list matches nothing: name a value or leave the field out")
    return [_value(item, field) for item in value]


def _selector(value: Any, field: str) -> dict[str, Any]:
    """One of the forms of ``NameSelector``, ``ArchSelector`` or ``KernelSelector`` as a ``Selector``."""
    if not isinstance(value, dict):
        return {"any_of": _values(value, field)}
    keys = ("not", "below", "at_least") if field == "kernel" else ("not",)
    extra = [k for k in value if k not in keys]
    if extra or not value:
        found = f"'{extra[0]}'" if extra else "nothing"
        raise ValueError(f"a mapping here takes {' or '.join(repr(k) for k in keys)}; found {found}")
    out: dict[str, Any] = {key: _value(value[key], field) for key in ("below", "at_least") if key in value}
    if "not" in value:
        out["none_of"] = _values(value["not"], field)
    return out


def _one_or_many(value: Any) -> Any:
    """A single name where a list is expected is a one-item list."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raise ValueError(f"{value!r} is a number, not a name: quote it")
    return [value] if isinstance(value, str) else value


class Condition(Model):
    """Every given field must match. A value is a name, a list (any of), ``{not: ...}``, or for
    ``kernel`` ``{below: V}`` / ``{at_least: V}``; ``options`` needs all, ``options_any`` one."""

    model_config = ConfigDict(json_schema_extra={"minProperties": 1})

    board: Selector | None = optional()
    arch: Selector | None = optional()
    release: Selector | None = optional()
    kernel: Selector | None = optional()
    options: list[Name] | None = optional()
    options_any: list[Name] | None = optional()

    @field_validator("board", "release", mode="before", json_schema_input_type=NameSelector)
    @classmethod
    def _parse_names(cls, value: Any, info: ValidationInfo) -> Any:
        return _selector(value, str(info.field_name))

    @field_validator("arch", mode="before", json_schema_input_type=ArchSelector)
    @classmethod
    def _parse_arch(cls, value: Any) -> Any:
        return _selector(value, "arch")

    @field_validator("kernel", mode="before", json_schema_input_type=KernelSelector)
    @classmethod
    def _parse_kernel(cls, value: Any) -> Any:
        return _selector(value, "kernel")

    @field_validator("options", "options_any", mode="before", json_schema_input_type=Name | list[Name])
    @classmethod
    def _listify(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("name an option or a list of them, or leave the field out")
        return _one_or_many(value)

    @model_validator(mode="after")
    def _not_empty(self) -> Condition:
        if not self.model_fields_set:
            raise ValueError("a condition needs at least one field")
        return self


class Rule(Model):
    """A combination the distro cannot build: jobs matching ``when`` are excluded."""

    id: Name
    summary: str = Field(description="why, in one line; shown by plan --explain")
    source: str = Field(default="", description="where upstream says so (e.g. a Kconfig symbol)")
    when: Condition


class FollowUp(Model):
    """A second build of a job, after its first: the job's kas files plus ``kas``, with artifacts of
    the first build put where the second reads them (upstream CI's ``build_swu_v2``)."""

    summary: str = Field(min_length=1)
    requires: list[Name] = Field(
        default_factory=list, description="options the first build must have (with what they imply)"
    )
    kas: list[KasFragment] = Field(default_factory=list, description="kas files included after the job's own")
    appends: dict[BitbakeName, str] = Field(
        default_factory=dict,
        description="recipe -> lines appended to it for this build, as upstream CI appends them to the .bb "
        "(cipbuild writes them as .bbappend files the build's local.conf adds to BBFILES)",
    )
    previous: list[ArtifactType] = Field(
        default_factory=list,
        description="artifact types of the first build copied into previous_folder (those it has; one at least)",
    )
    previous_folder: RelativePath = Field(
        default="previous-image", description="where they go, relative to the build folder (bitbake's TOPDIR)"
    )


class DistroFile(Model):
    """distros/<name>.yml: a build flavour of CIP Core (isar-cip-core, deby)."""

    description: str
    default: bool = Field(default=False, description="the distro a job gets when none is named (one at most)")
    build_system: Literal["isar", "openembedded"]
    repos: list[Name] = Field(min_length=1, description="repositories of kas/repos.yml this distro uses")
    base: list[KasFragment] = Field(min_length=1, description="kas files every job includes first")
    target: BitbakeName = Field(description="default image recipe")
    image_name: Annotated[str, _template(*IMAGE_FIELDS)] = Field(
        default="{target}-{distro}-{machine}{suffix}",
        description="deployed image base name; {target} {distro} {machine} {release} {suffix} (an option's "
        "image_suffix)",
    )
    rootfs_name: Annotated[str, _template(*IMAGE_FIELDS)] | None = Field(
        default=None, description="base name of .manifest/.dpkg_status; default image_name"
    )
    artifacts: list[ArtifactRule] = Field(default_factory=list, description="deployed by every board")
    builder: str = Field(description="default builder image (kas container), pinned by version and digest")
    runner_tags: list[str] = Field(
        default_factory=list, description="GitLab runner tags of its build jobs (ci gitlab); {arch}, {distro} filled"
    )
    kernels: dict[Version, Kernel] = Field(
        default_factory=dict,
        description="kernels a job may pick; leave out for a distro that builds its distribution's own kernel "
        "(its jobs then name no kernel)",
    )
    default_release: Name
    releases: dict[Name, Release] = Field(min_length=1)
    order: list[Name] = Field(
        description="include order: 'board', 'kernel', 'release' and option names; also the option order in job ids",
    )
    rules: list[Rule] = Field(default_factory=list)
    follow_ups: dict[Name, FollowUp] = Field(
        default_factory=dict, description="second builds a recipe may ask for (job id <first>--<name>)"
    )

    @field_validator("releases")
    @classmethod
    def _default_kernels(cls, releases: dict[str, Release], info: ValidationInfo) -> dict[str, Release]:
        if "kernels" not in info.data:
            return releases  # the kernels are wrong: that error is reported
        kernels = info.data["kernels"]
        for name, release in releases.items():
            if kernels and release.default_kernel is None:
                raise ValueError(f"release '{name}' needs a default_kernel: the distro lists kernels")
            if not kernels and release.default_kernel is not None:
                raise ValueError(
                    f"release '{name}' names default_kernel {release.default_kernel}, but the distro lists no "
                    "kernels (leave default_kernel out, or add kernels)"
                )
        return releases

    @field_validator("rules")
    @classmethod
    def _kernel_conditions(cls, rules: list[Rule], info: ValidationInfo) -> list[Rule]:
        if info.data.get("kernels", True):
            return rules
        for rule in rules:
            if rule.when.kernel is not None:
                raise ValueError(f"rule '{rule.id}' has a kernel condition, but the distro lists no kernels")
        return rules


class JobSpec(Model):
    """One job named field by field; unset fields come from the recipe's defaults."""

    distro: Name | None = None
    board: Name | None = None
    release: Name | None = None
    kernel: Version | Literal["default"] | None = None
    options: list[Name] = Field(default_factory=list)


KernelChoice = Version | Literal["default"]


class Axes(Model):
    """One set of axes: every distro x release x board x kernel x option set of it. A field left
    out takes the recipe's default (all the distro's boards for ``board``)."""

    distro: list[Name] | None = None
    board: list[Name] | None = None
    release: list[Name] | None = None
    kernel: list[KernelChoice] | None = None
    options: list[list[Name]] | None = Field(default=None, description="option sets; [] is the plain image")

    @field_validator("distro", "board", "release", mode="before", json_schema_input_type=Name | list[Name] | None)
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return _one_or_many(value)

    @field_validator("kernel", mode="before", json_schema_input_type=KernelChoice | list[KernelChoice] | None)
    @classmethod
    def _listify_kernel(cls, value: Any) -> Any:
        return _one_or_many(value)


class Exclude(Condition):
    distro: list[Name] | None = optional()

    @field_validator("distro", mode="before", json_schema_input_type=Name | list[Name])
    @classmethod
    def _listify_distro(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("name a distro or a list of them, or leave the field out")
        return _one_or_many(value)


class Waiver(Model):
    """Build the named jobs although ``rule`` excludes them, and say why."""

    rule: Name
    jobs: list[str] = Field(min_length=1, description="job ids")
    reason: str = Field(min_length=1)


class FollowUpChoice(Model):
    """Build the named jobs a second time, as the distro's follow-up ``name`` says."""

    name: Name = Field(description="a follow_ups entry of the jobs' distro")
    jobs: list[str] = Field(min_length=1, description="job ids of the first builds")


class Defaults(Model):
    distro: Name | None = None
    release: Name | None = None
    kernel: Version | Literal["default"] = "default"


class RecipeFile(Model):
    """recipes/<name>.yml: a named matrix."""

    # what ``_something`` demands, for the JSON Schema
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"required": ["matrix"], "properties": {"matrix": {"not": {"type": "array", "maxItems": 0}}}},
                {"required": ["include"], "properties": {"include": {"minItems": 1}}},
            ]
        }
    )

    description: str
    defaults: Defaults = Field(default_factory=Defaults)
    matrix: list[Axes] = Field(default_factory=list, description="one set of axes, or a list of them")
    include: list[JobSpec] = Field(default_factory=list)
    exclude: list[Exclude] = Field(default_factory=list)
    waive: list[Waiver] = Field(default_factory=list)
    follow_ups: list[FollowUpChoice] = Field(default_factory=list)

    @field_validator("matrix", mode="before", json_schema_input_type=Axes | list[Axes])
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _something(self) -> RecipeFile:
        if not self.matrix and not self.include:
            raise ValueError("a recipe needs a 'matrix' or an 'include' list")
        return self


class RepoPin(Model):
    url: str = Field(pattern=r"^(https?|git|ssh|file)://|^git@")
    commit: str = Field(pattern=r"^[0-9a-f]{40}$", description="full commit id")
    tag: str | None = Field(default=None, description="the release tag this commit is, for people")
    layers: dict[str, None] | None = None


class ReposFile(Model):
    """kas/repos.yml: every upstream repository, pinned by URL and full commit, in one place."""

    header: dict[str, Any]
    repos: dict[Name, RepoPin]


FILE_KINDS: dict[str, type[Model]] = {
    "board": BoardFile,
    "option": OptionFile,
    "distro": DistroFile,
    "recipe": RecipeFile,
    "repos": ReposFile,
    "testplan": TestPlanFile,
}


def is_name(text: str) -> bool:
    return re.fullmatch(NAME, text) is not None
