"""Argument parsing only: each command hands its arguments to one function that lives elsewhere."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path

from scai import __version__, config, metrics
from scai.errors import ConfigError, ScaiError


def _folders(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--session-dir", type=Path, help="session folder (env SCAI_SESSION_DIR; default ./session)")
    parser.add_argument("--usr", type=Path, help="model config folder (env SCAI_USR_DIR; default ./usr)")
    parser.add_argument(
        "--store",
        metavar="URL",
        help="redis://host:port/db: keep sessions in Redis (env SCAI_STORE; default: the folder)",
    )


def _settings(args: argparse.Namespace, **flags: object) -> config.Settings:
    """This process's one ``Settings``: defaults, then ``SCAI_*`` variables, then the flags given."""
    folders = {"session_dir": getattr(args, "session_dir", None), "usr_dir": getattr(args, "usr", None)}
    return config.Settings.from_env(**folders, store=getattr(args, "store", None), **flags)


def _default(name: str) -> object:
    return config.Settings.default(name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scai", description="SCAI: self-hosted image recognition.")
    parser.add_argument("--version", action="version", version=f"scai {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debugging detail")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the portal and one worker per job kind until Ctrl-C")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=5001)
    serve.add_argument(
        "--runningmode", choices=("runtime", "job"), help="workers that stay (default) or one per upload"
    )
    serve.add_argument(
        "--portal-only", action="store_true", help="start no workers (they run elsewhere, on the same --store)"
    )
    serve.add_argument(
        "--workers",
        metavar="auto|N",
        help="worker processes per job kind (env SCAI_WORKERS; default auto: one per core for TFLite models)",
    )
    _folders(serve)

    worker = commands.add_parser("worker", help="run one worker daemon")
    worker.add_argument("kind", choices=sorted(config.JOB_ALIASES), help="which job kind to serve")
    worker.add_argument(
        "--runningmode",
        choices=("runtime", "job"),
        default="runtime",
        help="runtime: stay and watch the pool; job: process what is pending, then exit",
    )
    worker.add_argument(
        "--checktimeperoid",
        type=float,
        metavar="S",
        help=f"seconds between rescans and recoveries of the pool (default {_default('rescan_seconds')}; "
        "events wake it sooner)",
    )
    worker.add_argument(
        "--usedconfig",
        metavar="NAME",
        help="load only this model section at start (others load when first asked for)",
    )
    worker.add_argument("--session", metavar="ID", help="job mode: process only this session")
    worker.add_argument(
        "--workers",
        metavar="auto|N",
        help="runtime mode: run N supervised worker processes (auto: as scai serve sizes them; "
        "default: env SCAI_WORKERS, else 1)",
    )
    worker.add_argument("--siblings", type=int, default=1, help=argparse.SUPPRESS)  # set by the supervisor
    worker.add_argument("--slot-fd", type=int, help=argparse.SUPPRESS)  # job mode: a slot the portal took
    _folders(worker)

    classify = commands.add_parser("classify", help="classify one image file and print the labels")
    classify.add_argument("image", type=Path)
    classify.add_argument("--model", help="a section of usr/image_classification.config (default: default)")
    classify.add_argument("--graph", type=Path, help="a model file instead of a configured section")
    classify.add_argument("--labels", type=Path, help="labels file for --graph")
    classify.add_argument("--input_layer", help="input tensor name (frozen graphs)")
    classify.add_argument("--output_layer", help="output tensor name (frozen graphs)")
    classify.add_argument("--input_mean", type=float, help="float input = (pixel - mean) / std")
    classify.add_argument("--input_std", type=float)
    classify.add_argument("--top", type=int, metavar="K", help=f"how many labels (default {_default('top_k')})")
    classify.add_argument("--json", action="store_true", help="print JSON instead of text")
    classify.add_argument("--usr", type=Path, help="model config folder (env SCAI_USR_DIR)")

    detect = commands.add_parser("detect", help="detect objects in one image file")
    detect.add_argument("image", type=Path)
    detect.add_argument("--model", help="a section of usr/object_detection.config (default: default)")
    detect.add_argument("--output", type=Path, help="write the annotated image here (PNG)")
    detect.add_argument("--json", action="store_true", help="print JSON instead of text")
    detect.add_argument("--usr", type=Path, help="model config folder (env SCAI_USR_DIR)")

    train = commands.add_parser("train", help="train a classifier on a folder of photos (one sub-folder per class)")
    train.add_argument("dataset", type=Path, metavar="DATASET_DIR")
    train.add_argument("--name", required=True, help="the model's name: served as model=NAME")
    train.add_argument(
        "--base",
        help="backbone: a classification section (default: default), a .tflite file, or mobilenet_v2 or "
        "efficientnet_b0 with --weights",
    )
    train.add_argument(
        "--weights", type=Path, help="a Keras application's weights file (_no_top .h5), never downloaded"
    )
    train.add_argument("--fine-tune", type=int, default=0, metavar="N", help="also tune the application's top N layers")
    train.add_argument("--fine-tune-epochs", type=int, default=5, help="epochs of fine-tuning (default 5)")
    train.add_argument("--epochs", type=int, default=150)
    train.add_argument("--validation-fraction", type=float, default=0.25, help="held out per class (default 0.25)")
    train.add_argument("--seed", type=int, default=0, help="the held-out split and the training (default 0)")
    train.add_argument("--bottleneck-dir", type=Path, help="feature cache (default USR/models/.bottlenecks)")
    train.add_argument(
        "--augment", action="store_true", help="also train on distorted copies of each training photo (cached too)"
    )
    train.add_argument(
        "--quantize", choices=("int8", "float16", "none"), default="none", help="also export the head so"
    )
    train.add_argument("--usr", type=Path, help="model config folder (env SCAI_USR_DIR)")

    evaluate = commands.add_parser(
        "evaluate", help="a classifier's accuracy on a labelled folder, or a detector's COCO mAP (--coco)"
    )
    evaluate.add_argument("dataset", type=Path, metavar="DATASET_DIR", help="class folders, or the photos (--coco)")
    evaluate.add_argument("--model", help="a section of the job's config (default: default)")
    evaluate.add_argument("--coco", type=Path, metavar="INSTANCES_JSON", help="COCO annotations: a detector's mAP")
    evaluate.add_argument("--report", type=Path, metavar="DIR", help="--coco: write report.md, metrics.json, a plot")
    evaluate.add_argument("--usr", type=Path, help="model config folder (env SCAI_USR_DIR)")

    quantize = commands.add_parser("quantize", help="a smaller head for a model made by scai train")
    quantize.add_argument("--model", required=True, help="the trained model's name")
    quantize.add_argument("--mode", choices=("int8", "float16"), required=True)
    quantize.add_argument("--usr", type=Path, help="model config folder (env SCAI_USR_DIR)")

    deploy = commands.add_parser("deploy", help="production files: nginx, uwsgi, systemd, cron")
    deploy_commands = deploy.add_subparsers(dest="deploy_command", required=True, metavar="ACTION")
    render = deploy_commands.add_parser("render", help="write deploy/ filled in for one installation")
    render.add_argument("--prefix", type=Path, default=config.ROOT, help="where SCAI and its .venv live")
    render.add_argument("--user", required=True, help="the user the services run as")
    render.add_argument("--group", help="their group (default: the user's; use www-data so nginx reaches the socket)")
    render.add_argument("--port", type=int, default=80, help="the port nginx listens on (default 80)")
    render.add_argument("--host", default="", help="the address nginx listens on (default: all)")
    render.add_argument("--out", type=Path, required=True, help="where to write the files (e.g. /etc/scai)")
    render.add_argument("--session-dir", type=Path, help="default PREFIX/session")
    render.add_argument("--usr", type=Path, help="model configs; default PREFIX/usr")
    render.add_argument("--run-dir", type=Path, default=Path("/run/scai"), help="uwsgi socket folder")
    render.add_argument("--log-dir", type=Path, default=Path("/var/log/scai"))
    render.add_argument(
        "--max-upload-mb",
        type=int,
        default=_default("max_upload_mb"),
        help="upload limit, nginx and portal alike (default %(default)s)",
    )
    render.add_argument(
        "--workers", default="auto", metavar="auto|N", help="worker processes per job kind (default auto)"
    )
    render.add_argument(
        "--store",
        default="",
        metavar="URL",
        help="redis://HOST:PORT/DB shared by every portal and worker unit (default: the session folder)",
    )
    render.add_argument(
        "--portal-processes", default="auto", metavar="auto|N", help="uwsgi processes (default auto: one per core)"
    )

    models = commands.add_parser("models", help="install ready-made models (scai models list) or your own")
    actions = models.add_subparsers(dest="action", required=True, metavar="ACTION")
    listed = actions.add_parser("list", help="the catalogue, and what is installed")
    listed.add_argument("--usr", type=Path, help="model config folder (env SCAI_USR_DIR; default ./usr)")
    pull = actions.add_parser("pull", help="download a model, check its SHA-256, add its section")
    pull.add_argument("name", help="a name from `scai models list`, e.g. coco-ssd")
    pull.add_argument("--usr", type=Path, help="model config folder (env SCAI_USR_DIR; default ./usr)")
    pull.add_argument(
        "--from",
        dest="source",
        metavar="URL|DIR",
        help="a mirror URL or a folder with the files (default: their source)",
    )

    add = actions.add_parser("add", help="install your own .onnx or .tflite model (checked by loading it)")
    add.add_argument("name", help="the model's name: model=NAME, /v1/vision/custom/NAME")
    add.add_argument("file", type=Path, help="the model file (.onnx, .tflite, ...)")
    add.add_argument("--labels", type=Path, help="one class a line, the first is class 0")
    add.add_argument("--job", choices=sorted(config.JOB_ALIASES), default="detect", help="default: detect")
    add.add_argument("--layout", help="yolox, yolo or detr, where the model's shapes cannot tell")
    add.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any other key of the section")

    convert = actions.add_parser(
        "convert", help="a TF1 Object Detection API SSD (.pb) as a .tflite, served without TensorFlow"
    )
    convert.add_argument("graph", help="the frozen graph: a path, or package:PKG/FILE")
    convert.add_argument("out", type=Path, help="the .tflite to write")
    add.add_argument("--usr", type=Path, help="model config folder (env SCAI_USR_DIR; default ./usr)")

    faces = commands.add_parser("faces", help="the registered faces: list, delete, export, import")
    faces_actions = faces.add_subparsers(dest="action", required=True, metavar="ACTION")
    helps = {"list": "each person and how many faces", "delete": "forget a person",
             "export": "everyone to a JSON file", "import": "add the people of such a file"}  # fmt: skip
    for action, text in helps.items():
        one = faces_actions.add_parser(action, help=text)
        _folders(one)
        if action == "delete":
            one.add_argument("userid")
        if action in ("export", "import"):
            one.add_argument("file", type=Path, help="- for standard output or input")

    clean = commands.add_parser("clean", help="remove sessions older than a limit")
    add_clean_arguments(clean)
    return parser


def add_clean_arguments(parser: argparse.ArgumentParser) -> None:
    """Shared with the stand-alone ``clean.py`` so cron lines for either stay the same."""
    parser.add_argument("--sessionpath", type=Path, help="session folder (env SCAI_SESSION_DIR)")
    parser.add_argument("--store", metavar="URL", help="a Redis store instead (env SCAI_STORE)")
    parser.add_argument("--keeptimeperoid", type=float, metavar="SECONDS",
                        help=f"remove sessions older than this (env SCAI_KEEP_SECONDS; "
                             f"default {_default('keep_seconds'):g})")  # fmt: skip


def run_clean(args: argparse.Namespace) -> int:
    from scai.store import open_store

    settings = config.Settings.from_env(
        session_dir=args.sessionpath, keep_seconds=args.keeptimeperoid, store=getattr(args, "store", None)
    )
    where = settings.store or str(settings.session_dir)
    removed, kept = open_store(settings).clean(settings.keep_seconds)
    print(f"removed {len(removed)} sessions, kept {kept} (in {where})")
    for session_id in removed:
        print(f"removed {session_id}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s",
    )
    try:
        return _dispatch(args)
    except ScaiError as error:
        print(f"scai: {error.message}", file=sys.stderr)
        return error.exit_code
    except OSError as error:  # a file named on the command line that cannot be read or written
        if error.filename is None:
            raise
        print(f"scai: {error.filename}: {error.strerror}", file=sys.stderr)
        return 1


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "serve":
        from scai.service import serve

        settings = _settings(args, running_mode=args.runningmode, workers=args.workers)
        return serve(settings, args.host, args.port, args.portal_only)
    if args.command == "worker":
        return run_worker(args)
    if args.command == "classify":
        return run_classify(args)
    if args.command == "detect":
        return run_detect(args)
    if args.command == "deploy":
        return run_deploy(args)
    if args.command == "train":
        return run_train(args)
    if args.command == "evaluate":
        return run_evaluate(args)
    if args.command == "quantize":
        return run_quantize(args)
    if args.command == "models":
        return run_models(args)
    if args.command == "faces":
        from scai.facedb import run_command

        return run_command(_settings(args), args.action, getattr(args, "userid", None), getattr(args, "file", None))
    return run_clean(args)


def run_worker(args: argparse.Namespace) -> int:
    from scai.launcher import run_group
    from scai.worker import run

    workers = args.workers or (None if os.environ.get("SCAI_WORKERS") else "1")  # one process unless asked
    settings = _settings(args, rescan_seconds=args.checktimeperoid, workers=workers)
    metrics.enable(settings)
    job = config.JOB_ALIASES[args.kind]
    processes = settings.worker_processes(job)
    if args.runningmode == "runtime" and processes > 1:
        return run_group(settings, job, processes, *(("--usedconfig", args.usedconfig) if args.usedconfig else ()))
    return run(settings, job, args.runningmode, args.usedconfig, args.session, args.siblings, args.slot_fd)


def from_args(cls: type, args: argparse.Namespace, **overrides: object) -> object:
    """A dataclass filled from the flags of the same names (``--validation-fraction`` ->
    ``validation_fraction``), then ``overrides``."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{**{k: v for k, v in vars(args).items() if k in names}, **overrides})


def run_train(args: argparse.Namespace) -> int:
    import shlex

    from scai.train.trainer import TrainOptions, train

    options = from_args(
        TrainOptions, args, usr_dir=_settings(args).usr_dir, command=shlex.join(["scai", *sys.argv[1:]])
    )
    result = train(options)
    for path, reason in result.unreadable:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    quantized = f" ({args.quantize}: {result.quantized_accuracy:.1%})" if result.quantized_accuracy is not None else ""
    print(f"held-out accuracy {result.accuracy:.1%}{quantized} on {result.validation_count} photos")
    print(f"bottlenecks: {result.computed} computed, {result.reused} reused; {result.seconds['total']} s in all")
    print(f"report: {result.model_dir / 'report.md'}")
    print(f"served as model={result.name} (section [{result.name}] of {options.usr_dir}/image_classification.config)")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    if args.coco:
        return run_coco_evaluate(args)
    from scai.train.evaluate import evaluate

    usr = _settings(args).usr_dir
    result = evaluate(config.pick_model(config.load_models(usr, config.CLASSIFICATION), args.model), args.dataset)
    for path, reason in result.skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    print(result.table())
    return 0


def run_coco_evaluate(args: argparse.Namespace) -> int:
    from scai import cocoeval

    settings = _settings(args)
    spec = config.pick_model(config.load_models(settings.usr_dir, config.DETECTION), args.model)
    result = cocoeval.evaluate(spec, args.coco, args.dataset, settings.max_pixels, args.report)
    print(result.table())
    if result.unmatched_labels:
        print(f"labels no category is named like: {', '.join(result.unmatched_labels)}", file=sys.stderr)
    return 0


def run_quantize(args: argparse.Namespace) -> int:
    from scai.train.evaluate import quantize

    result = quantize(_settings(args).usr_dir, args.model, args.mode)
    print(
        f"head: {result['float_size'] / 1024:.1f} KB float -> {result[args.mode + '_size'] / 1024:.1f} KB {args.mode}"
    )
    print(
        f"held-out accuracy: {result['float_accuracy']:.1%} float -> {result[args.mode + '_accuracy']:.1%} {args.mode}"
    )
    print(f"now serving {result['head']}")
    return 0


def run_models(args: argparse.Namespace) -> int:
    from scai import catalogue

    usr = _settings(args).usr_dir
    if args.action == "list":
        print("\n".join(catalogue.listing(usr)))
        return 0
    if args.action == "add":
        return run_add(args, usr)
    if args.action == "convert":
        from scai.convert import convert_ssd

        what = convert_ssd(config.resolve_path(args.graph, Path.cwd()), args.out)
        print(
            f"wrote {args.out}: {what}; serve it with RESIZE = tensorflow, INPUT_MEAN = 0, INPUT_STD = 1 "
            "and the graph's label map (its class ids count from 1)"
        )
        return 0
    folder = catalogue.pull(usr, args.name, args.source)
    job = catalogue.entry(args.name).job
    print(f"installed {args.name} in {folder}; served as model={args.name} ([{args.name}] in {usr / job}.config)")
    return 0


def run_add(args: argparse.Namespace, usr: Path) -> int:
    from scai.bring import add

    if bad := [item for item in args.set if "=" not in item]:
        raise ConfigError(f"--set takes KEY=VALUE, not {bad[0]!r}")
    keys = dict(item.split("=", 1) for item in args.set)
    if args.layout:
        keys["layout"] = args.layout
    job = config.JOB_ALIASES[args.job]
    recognised = add(usr, args.name, args.file, args.labels, job, keys)
    route = f"/api/v1/{args.job}?model={args.name}" + (
        f", /v1/vision/custom/{args.name}" if job == config.DETECTION else ""
    )
    print(f"added {args.name}: {recognised}; served as {route} ([{args.name}] in {usr / job}.config)")
    return 0


def run_deploy(args: argparse.Namespace) -> int:
    from scai.deploy import Installation, render

    installation = from_args(Installation, args, usr_dir=args.usr)
    written = render(installation, args.out)
    for path in written:
        print(path)
    return 0


def run_detect(args: argparse.Namespace) -> int:
    import json

    from scai.tasks import detect_file

    settings = _settings(args)
    spec = config.pick_model(config.load_models(settings.usr_dir, config.DETECTION), args.model)
    fields = detect_file(spec, args.image, args.output, settings.max_pixels)
    if args.json:
        print(json.dumps(fields["detections"], indent=1))
    else:
        for d in fields["detections"]:
            box = d["box"]
            print(f"{d['label']}: {d['score']:.3f} at x {box['xmin']}-{box['xmax']}, y {box['ymin']}-{box['ymax']}")
    return 0


def _classify_spec(args: argparse.Namespace, settings: config.Settings) -> config.ModelSpec:
    if not args.graph:
        return config.pick_model(config.load_models(settings.usr_dir, config.CLASSIFICATION), args.model)
    return config.ModelSpec(
        name=args.graph.name,
        job=config.CLASSIFICATION,
        path=args.graph.resolve(),
        labels=args.labels.resolve() if args.labels else None,
        input_layer=args.input_layer,
        output_layer=args.output_layer,
        input_mean=args.input_mean,
        input_std=args.input_std,
    )


def run_classify(args: argparse.Namespace) -> int:
    import json

    from scai.tasks import classify_file

    settings = _settings(args, top_k=args.top)
    predictions = classify_file(_classify_spec(args, settings), args.image, settings.top_k, settings.max_pixels)
    if args.json:
        print(json.dumps([{"label": p.label, "score": round(p.score, 6)} for p in predictions], indent=1))
    else:
        for p in predictions:
            print(f"{p.label}: {p.score:.5f}")
    return 0
