"""Small pieces both entry scripts use: the per-epoch lr schedule and upstream's ``module.`` key layout (the
RNG states of every process are in ``common/checkpoint.py``, the launch modes in ``common/dist.py``)."""
import math

import torchvision.models as models

from common.checkpoint import load_checkpoint
from common.cli import MAX_BATCH, MAX_EPOCHS, adopt_recorded_args, count, recorded_checks


# upstream listed every lowercase callable of torchvision.models (helpers included); builders only
MODEL_NAMES = sorted(models.list_models(module=models))


def add_training_args(p, data_help, epochs, lr, schedule, weight_decay):
    """The options both scripts share with upstream (defaults differ between pretraining and lincls)."""
    p.add_argument("data", metavar="DIR", help=data_help)
    p.add_argument("-a", "--arch", metavar="ARCH", default="resnet50", choices=MODEL_NAMES,
                   help="torchvision backbone: " + " | ".join(MODEL_NAMES))
    p.add_argument("-j", "--workers", default=32, type=int, help="data loading workers per node")
    p.add_argument("--epochs", default=epochs, type=count(MAX_EPOCHS), help="number of epochs")
    p.add_argument("--start-epoch", default=0, type=int, help="manual epoch number (overwritten by --resume)")
    p.add_argument("-b", "--batch-size", default=256, type=count(MAX_BATCH),
                   help="total batch over the processes of one node (upstream's meaning)")
    p.add_argument("--lr", "--learning-rate", default=lr, type=float, dest="lr", help="initial learning rate")
    p.add_argument("--schedule", default=schedule, nargs="*", type=int,
                   help="epochs at which the lr is multiplied by 0.1 (ignored with --cos)")
    p.add_argument("--momentum", default=0.9, type=float, help="SGD momentum")
    p.add_argument("--wd", "--weight-decay", default=weight_decay, type=float, dest="weight_decay",
                   help="weight decay")
    p.add_argument("-p", "--print-freq", default=10, type=int, help="print every N iterations")


def parse_args(parser, argv, session, check=lambda args: None):
    """The command line; with ``--resume PATH`` every option not written on it comes from the settings recorded
    in that checkpoint (``session`` options excepted), each checked as a typed one. The checkpoint is checked
    again when it is used. ``check(args)``: the script's range checks (an error about a recorded value names
    the checkpoint)."""
    args = parser.parse_args(argv)
    adopted = None
    if args.resume:
        ckpt = load_checkpoint(args.resume, unsafe=args.unsafe_load)
        adopted = adopt_recorded_args(args, ckpt.get("args") if isinstance(ckpt, dict) else None, parser, argv,
                                      session, args.resume)
    with recorded_checks(adopted):
        check(args)
    return args


def adjust_learning_rate(optimizer, epoch, args):
    """Set once per epoch, before it: cosine ``lr * 0.5(1+cos(pi e/E))`` with ``args.cos``, else x0.1 at
    every milestone of ``args.schedule`` already reached (0-based epochs, as upstream)."""
    lr = args.lr
    if getattr(args, "cos", False):
        lr *= 0.5 * (1.0 + math.cos(math.pi * epoch / args.epochs))
    else:
        for milestone in args.schedule:
            lr *= 0.1 if epoch >= milestone else 1.0
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def module_state_dict(net):
    """``net.state_dict()`` with the ``module.`` prefix DDP / DataParallel give it upstream (also when
    this run used a single process and no wrapper), so files are interchangeable with upstream."""
    return {"module." + k: v for k, v in net.state_dict().items()}
