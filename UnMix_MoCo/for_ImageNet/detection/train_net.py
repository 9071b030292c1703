#!/usr/bin/env python
"""Detection transfer with detectron2 (upstream ``detection/train_net.py``; needs detectron2, which the
rest of the project does not): Faster R-CNN R50-C4 on VOC, Mask R-CNN R50-C4 2x on COCO.

    python convert-pretrain-to-detectron2.py checkpoint_0199.pth.tar unmix.pkl
    python train_net.py --config-file configs/pascal_voc_R_50_C4_24k_moco.yaml --num-gpus 8 MODEL.WEIGHTS ./unmix.pkl

The ROI head appends a norm layer after res5 (the extra BN of the MoCo paper). Upstream overrode
detectron2's private ``_build_res5_block``; here the constructor appends it (upstream MoCo's later form),
and COCOEvaluator gets keyword arguments (the cfg-positional form is deprecated).
"""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # repo root

from common.cli import CLIError, run_main  # noqa: E402

try:
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch
    from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator
    from detectron2.layers import get_norm
    from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, Res5ROIHeads
except ImportError as e:  # pragma: no cover - detectron2 is optional
    DETECTRON2_ERROR = e
else:
    DETECTRON2_ERROR = None

    @ROI_HEADS_REGISTRY.register()
    class Res5ROIHeadsExtraNorm(Res5ROIHeads):
        """``Res5ROIHeads`` with one more norm layer (``cfg.MODEL.RESNETS.NORM``) after the res5 stage."""

        def __init__(self, cfg, input_shape):
            super().__init__(cfg, input_shape)
            self.res5.add_module("norm", get_norm(cfg.MODEL.RESNETS.NORM, self.res5[-1].out_channels))

    class Trainer(DefaultTrainer):
        @classmethod
        def build_evaluator(cls, cfg, dataset_name, output_folder=None):
            output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
            if "coco" in dataset_name:
                return COCOEvaluator(dataset_name, output_dir=output_folder)
            assert "voc" in dataset_name, dataset_name
            return PascalVOCDetectionEvaluator(dataset_name)


def setup(args):
    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def cli():
    if DETECTRON2_ERROR is not None:
        raise CLIError(f"detectron2 is required for detection transfer ({DETECTRON2_ERROR}); install it as "
                       "https://detectron2.readthedocs.io/en/latest/tutorials/install.html describes")
    args = default_argument_parser().parse_args()
    if not args.config_file or not os.path.isfile(args.config_file):
        raise CLIError(f"--config-file {args.config_file!r} does not exist (see configs/)")
    print("Command Line Args:", args)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))


if __name__ == "__main__":
    run_main(cli)
