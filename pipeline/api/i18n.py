"""Every text the API shows people, in Russian (the original guide's language, the default) and English
(`Accept-Language: en`). Machine codes never change with the language; only these texts do."""

from __future__ import annotations

from typing import Any, NamedTuple

LANGUAGES = ("ru", "en")
DEFAULT_LANGUAGE = "ru"

TEXTS: dict[str, tuple[str, str]] = {
    # errors, keyed by their stable code
    "missing_api_key": (
        "Нужен API ключ: заголовок X-API-Key или Authorization: Bearer",
        "An API key is required: send X-API-Key or Authorization: Bearer",
    ),
    "invalid_api_key": ("Неверный или отозванный API ключ", "Invalid or revoked API key"),
    "rate_limited": (
        "Превышен лимит запросов ({limit} за {window} с). Повторите через {retry_after} с",
        "Rate limit exceeded ({limit} per {window} s). Retry in {retry_after} s",
    ),
    "task_not_found": ("Задача {task_id} не найдена", "Task {task_id} not found"),
    "result_not_found": (
        "Результат задачи {task_id} в формате {format} не найден (удалён или истёк срок хранения)",
        "The {format} result of task {task_id} is gone (deleted or expired)",
    ),
    "not_found": ("Ресурс не найден", "Not found"),
    "method_not_allowed": ("Метод не поддерживается для этого адреса", "Method not allowed for this URL"),
    "file_too_large": (
        "Файл слишком большой: не более {limit} байт",
        "File too large: at most {limit} bytes",
    ),
    "not_multipart": (
        "Ожидается multipart/form-data с файлом в поле {field}",
        "Expected multipart/form-data with the file in the {field} field",
    ),
    "bad_multipart": (
        "Повреждённое тело multipart/form-data: {reason}",
        "Malformed multipart/form-data body: {reason}",
    ),
    "file_missing": ("Нет файла: передайте его в поле {field}", "No file: send it in the {field} field"),
    "empty_file": ("Файл пустой", "The file is empty"),
    "unsupported_format": (
        "Формат «{extension}» не поддерживается. Допустимые: {supported}",
        "Format '{extension}' is not supported. Supported: {supported}",
    ),
    "bad_media": (
        "Файл не удаётся прочитать как аудио или видео: {reason}",
        "The file is not readable audio or video: {reason}",
    ),
    "bad_parameter": ("Неверный параметр {name}: {reason}", "Invalid parameter {name}: {reason}"),
    "bad_callback_url": ("Недопустимый callback_url: {reason}", "Invalid callback_url: {reason}"),
    "bad_request": ("Неверный запрос", "Bad request"),
    "task_not_completed": (
        "Задача ещё не завершена: {status}, {progress}%",
        "The task is not finished yet: {status}, {progress}%",
    ),
    "task_failed": ("Задача завершилась с ошибкой: {error}", "The task failed: {error}"),
    "idempotency_in_progress": (
        "Запрос с этим Idempotency-Key ещё обрабатывается; повторите позже",
        "A request with this Idempotency-Key is still being processed; retry later",
    ),
    "transcription_failed": ("Не удалось транскрибировать файл: {error}", "Transcription failed: {error}"),
    "timeout": (
        "Транскрибация не завершилась за {seconds} с; задача {task_id} продолжает выполняться",
        "Transcription did not finish within {seconds} s; task {task_id} keeps running",
    ),
    "service_unavailable": ("Сервис временно недоступен: {reason}", "Service temporarily unavailable: {reason}"),
    "internal_error": ("Внутренняя ошибка сервера", "Internal server error"),
    # informational messages
    "upload_accepted": ("Файл успешно загружен и отправлен на обработку", "File uploaded and queued for processing"),
    "status_pending": ("Задача в очереди на обработку", "The task is queued"),
    "status_decoding": ("Подготовка аудио...", "Preparing the audio..."),
    "status_transcribing": ("Транскрибация в процессе...", "Transcription in progress..."),
    "status_formatting": ("Подготовка результатов...", "Preparing the results..."),
    "status_waiting_model": (
        "Задача ждёт модель распознавания, она ещё не готова: {reason}",
        "The task waits for the speech model, which is not ready: {reason}",
    ),
    "upload_waiting_model": (
        "Файл принят, но модель распознавания не готова, задача ждёт её: {reason}",
        "File accepted, but the speech model is not ready; the task waits for it: {reason}",
    ),
    "estimate_unknown": (
        "неизвестно: модель распознавания не готова",
        "unknown: the speech model is not ready",
    ),
    "status_completed": ("Транскрибация успешно завершена", "Transcription completed"),
    "status_failed": ("Ошибка обработки: {error}", "Processing failed: {error}"),
    "task_deleted": ("Задача {task_id} удалена", "Task {task_id} deleted"),
    "estimate": ("≈ {minutes} мин {seconds} с", "≈ {minutes} min {seconds} s"),
    "estimate_short": ("≈ {seconds} с", "≈ {seconds} s"),
}


def negotiate(header: str | None) -> str:
    """The supported language the client ranks highest (RFC 9110 q-values); Russian when it names
    neither."""
    best, best_q = DEFAULT_LANGUAGE, 0.0
    for item in (header or "").split(","):
        tag, _, params = item.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        primary = tag.strip().lower().split("-")[0]
        if primary in LANGUAGES and q > best_q:  # strict: the first of equals wins
            best, best_q = primary, q
    return best


class Both(NamedTuple):
    """A message parameter that itself reads differently per language."""

    ru: str
    en: str


def one_of(values: list[str] | tuple[str, ...]) -> Both:
    listed = ", ".join(values)
    return Both(f"одно из: {listed}", f"one of: {listed}")


def text(key: str, lang: str, **params: Any) -> str:
    ru, en = TEXTS[key]
    template = en if lang == "en" else ru
    if not params:
        return template
    chosen = {k: (v.en if lang == "en" else v.ru) if isinstance(v, Both) else v for k, v in params.items()}
    return template.format(**chosen)
