"""The indexer's small models, each loaded once per process and never downloaded: `speech` (faster-whisper with
its VAD), `ocr` (RapidOCR) and `embedders` (the text and visual embedders). The stages that use them are in
indexer/stages/; app/services.py builds them and hands them to the stages through `indexer.context`.
"""
