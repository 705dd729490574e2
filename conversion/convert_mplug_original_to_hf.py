"""Convert an original mPLUG checkpoint (AliceMind .pth or ModelScope folder) into a transformers model folder.

    python conversion/convert_mplug_original_to_hf.py mplug_base.pth out/mplug-base --task pretrain \
        --config-bert configs/config_bert.json --image-size 384

Same as the `mplug-convert` console command. The key mapping and drop rules are documented in
`mplug_hf/convert_original.py`.
"""

from mplug_hf.convert_original import main


if __name__ == "__main__":
    main()
